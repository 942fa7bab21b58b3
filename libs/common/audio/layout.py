"""What every user of feature vectors must agree on, without importing librosa.

The web service compares vectors and the dispatcher decides what is already vectorized:
both need the version, and neither should pay for importing the feature code.
"""

FEATURE_VERSION = 1
SAMPLE_RATE = 22050
