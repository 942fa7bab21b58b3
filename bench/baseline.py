"""The single-process baseline: the pipeline's CSV work, done in one loop, with the same libs.

``python -m bench.baseline INPUT OUTPUT [--chunk-rows N] [--profile FILE]`` streams INPUT:
cut it into chunks of whole records (``csvfile.iter_chunks``, what the dispatcher does), read
each chunk's byte range from a second handle (what a worker's ranged read does), parse it
(``csvfile.iter_records``), map every row (``mapping.Mapper``), format the part
(``csvfile.write_rows``) and append it to OUTPUT after a header line. So OUTPUT should be
byte-for-byte the output the pipeline composes. No broker, database, HTTP or fsync.

It prints one JSON object: timings, row counts, the output's size and SHA-256, and its own
peak RSS (``VmHWM``). ``csv_pipeline`` runs it as a child process so that the RSS is the
baseline's alone.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import pstats
import sys
import time
from pathlib import Path

from bench import data, procfs
from libs.common import csvfile, mapping
from libs.common.settings import Settings


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def run(
    source: Path, output: Path, spec_json: str, chunk_rows: int, max_chunk_bytes: int
) -> dict[str, object]:
    rows_in = rows_out = failed = filtered = errors = chunks = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    waited = procfs.runqueue_wait_seconds("self")
    with open(source, "rb") as cutter, open(source, "rb") as reader, open(output, "wb") as out:
        header, data_offset = csvfile.read_header(cutter)
        mapper = mapping.Mapper(mapping.parse_spec(spec_json), header)
        out.write(csvfile.header_line(mapper.output_header))
        for chunk in csvfile.iter_chunks(
            cutter, start=data_offset, rows_per_chunk=chunk_rows, max_chunk_bytes=max_chunk_bytes
        ):
            chunks += 1
            reader.seek(chunk.start)
            block = reader.read(chunk.end - chunk.start)
            part: list[list[str]] = []
            for row_number, fields, _problem in csvfile.iter_records(
                block, chunk.first_row, offset=chunk.start
            ):
                rows_in += 1
                if fields is None:
                    failed += 1
                    errors += 1
                    continue
                values, row_errors = mapper.map_row(row_number, fields)
                if row_errors:
                    failed += 1
                    errors += len(row_errors)
                elif values is None:
                    filtered += 1
                if values is not None:
                    part.append(values)
            rows_out += len(part)
            out.write(csvfile.write_rows(part))
    seconds = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    waited_end = procfs.runqueue_wait_seconds("self")
    return {
        "seconds": seconds,
        "cpu_s": cpu_s,
        # runnable but waiting for a CPU (other processes had it)
        "runqueue_wait_s": None if waited is None or waited_end is None else waited_end - waited,
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_failed": failed,
        "rows_filtered": filtered,
        "row_errors": errors,
        "chunks": chunks,
        "rows_per_s": rows_in / seconds if seconds > 0 else None,
        "output_bytes": output.stat().st_size,
        "output_sha256": sha256_file(output),
        "peak_rss_kib": procfs.status_kib("self", "VmHWM"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--chunk-rows", type=int, default=2000)
    parser.add_argument(
        "--chunk-max-bytes", type=int, default=Settings().chunk_max_bytes,
        help="as CHUNK_MAX_BYTES (default: the services' default)",
    )  # fmt: skip
    parser.add_argument("--spec", type=Path, help="a mapping spec file (default: bench.data.SPEC)")
    parser.add_argument(
        "--profile", type=Path, metavar="FILE",
        help="run under cProfile; write the stats to FILE and the top functions to stderr",
    )  # fmt: skip
    args = parser.parse_args(argv)
    spec_json = args.spec.read_text() if args.spec else data.SPEC_JSON
    call = (args.input, args.output, spec_json, args.chunk_rows, args.chunk_max_bytes)
    if args.profile:
        profiler = cProfile.Profile()
        result = profiler.runcall(run, *call)
        profiler.dump_stats(args.profile)
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(25)
        result["profiled"] = True  # cProfile overhead: the timings are not comparable
    else:
        result = run(*call)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
