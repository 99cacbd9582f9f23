"""The benchmark's sections, in the order they run (BENCH_SECTIONS picks
some). Each module has `run(settings, harness)`, which measures and returns
its entry of results.json, and `render(result)`, its lines of the table."""

from . import (accept_to_start, burst, end_to_end, fleet, ingest, k6, memory, mllp, processing,
               side_by_side, sleeping_lanes, slowloris, soak, takeover)

SECTIONS = {
    "ingest": ingest,
    "end_to_end": end_to_end,
    "sleeping_lanes": sleeping_lanes,
    "side_by_side": side_by_side,
    "fleet": fleet,
    "takeover": takeover,
    "accept_to_start": accept_to_start,
    "memory": memory,
    "mllp": mllp,
    "slowloris": slowloris,
    "processing": processing,
    "k6": k6,
    "burst": burst,
    "soak": soak,
}
