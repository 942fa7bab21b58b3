"""Audio: decoding, feature vectors and downloads for the music workload."""
