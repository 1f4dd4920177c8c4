"""What the soak measures of the server process, from outside it: RSS, open file descriptors and
threads from ``/proc/<pid>``, the JVM's heap (when PMML models started one in the process) from
the JVM's own performance counters, and the consumer lag from the server's ``/metrics``.

The JVM publishes its counters in a memory-mapped file, ``/tmp/hsperfdata_<user>/<pid>`` (what
``jstat`` reads), unless it runs with ``-XX:-UsePerfData``. Reading it costs nothing in the
server, where ``jcmd`` or ``jstat`` would start a JVM every sample beside it.
"""

from __future__ import annotations

import getpass
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

_PERF_MAGIC = b"\xca\xfe\xc0\xc0"
_PERF_PROLOGUE = "iiqii"  # used, overflow, modification time, entry offset, entry count
_PERF_ENTRY = "iiiBBBBi"  # length, name offset, vector length, type, flags, units, variability,
# data offset
MIB = 1024 * 1024


@dataclass(frozen=True)
class ProcessSample:
    rss_mib: float
    fds: int
    threads: int
    jvm_heap_mib: float  # NaN: no JVM in the process
    jvm_old_mib: float


def sample_process(pid: int) -> ProcessSample:
    """The process's memory, descriptors and threads now; raises ``FileNotFoundError`` once the
    process is gone."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kib = int(fields["VmRSS"].split()[0])
    threads = int(fields["Threads"])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    heap, old = jvm_heap_mib(pid)
    return ProcessSample(rss_kib / 1024, fds, threads, heap, old)


def jvm_heap_mib(pid: int) -> tuple[float, float]:
    """(heap used, old generation used) in MiB of the JVM inside process ``pid``; NaNs when it
    has none. The old generation after collections is where retained Java objects show."""
    counters = perf_counters(Path("/tmp") / f"hsperfdata_{getpass.getuser()}" / str(pid))
    if not counters:
        return math.nan, math.nan
    used = sum(
        value
        for name, value in counters.items()
        if name.startswith("sun.gc.generation.") and name.endswith(".used") and ".space." in name
    )
    old = sum(
        value
        for name, value in counters.items()
        if name.startswith("sun.gc.generation.1.space.") and name.endswith(".used")
    )
    return used / MIB, old / MIB


def perf_counters(path: Path) -> dict[str, int]:
    """The scalar long counters of a HotSpot ``hsperfdata`` file (format version 2); empty if
    the file does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    if data[:4] != _PERF_MAGIC:
        return {}
    order = "<" if data[4] == 1 else ">"
    *_, entry_offset, entries = struct.unpack_from(order + _PERF_PROLOGUE, data, 8)
    counters: dict[str, int] = {}
    offset = entry_offset
    for _ in range(entries):
        length, name_at, vector, kind, *_, data_at = struct.unpack_from(
            order + _PERF_ENTRY, data, offset
        )
        if length <= 0:
            break
        if kind == ord("J") and vector == 0:
            name_end = data.index(b"\0", offset + name_at)
            name = data[offset + name_at : name_end].decode("ascii", "replace")
            counters[name] = struct.unpack_from(order + "q", data, offset + data_at)[0]
        offset += length
    return counters


def server_metrics(api: httpx.Client) -> dict[str, float]:
    """The server's Prometheus samples without labels (totals, gauges), by name."""
    text = api.get("/metrics").text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }
