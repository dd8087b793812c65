"""Hardware detection: recorded outputs of machines this one is not (an Intel server, an H100 box, an
arm64 server, a Mac), and this machine itself."""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from enginehouse import hardware as hw
from enginehouse.hardware import GPU, Probe

GiB = 1 << 30
MiB = 1 << 20

# An Intel Xeon, 2 cores with hyper-threading (4 processors), AVX-512 and AMX; abbreviated flags.
XEON_FLAGS = (
    "fpu vme de pse tsc msr pae sse sse2 ssse3 fma cx16 sse4_1 sse4_2 popcnt avx f16c rdrand avx2 "
    "bmi2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16 avx512_vnni avx_vnni amx_bf16 amx_tile "
    "amx_int8"
)
XEON_CPUINFO = "\n\n".join(
    f"processor\t: {p}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
    f"physical id\t: 0\nsiblings\t: 4\ncore id\t\t: {core}\ncpu cores\t: 2\nflags\t\t: {XEON_FLAGS}"
    for p, core in enumerate((0, 1, 0, 1))
)
XEON_MEMINFO = "MemTotal:       65843876 kB\nMemFree:         1234567 kB\nMemAvailable:   60123456 kB\n"

# One socket of an H100 server: AMD EPYC 9454 (4 of its processors), 2 TiB of RAM.
EPYC_CPUINFO = "\n\n".join(
    f"processor\t: {p}\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9454 48-Core Processor\n"
    f"physical id\t: 0\ncore id\t\t: {p}\ncpu cores\t: 48\n"
    "flags\t\t: fpu sse sse2 sse4_1 sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni "
    "avx512_bf16"
    for p in range(4)
)
H100_MEMINFO = "MemTotal:       2113389124 kB\nMemFree:        2000000000 kB\nMemAvailable:   2080000000 kB\n"
# nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version,compute_cap \
#     --format=csv,noheader,nounits
H100_SMI = (
    "NVIDIA H100 80GB HBM3, 81559, 81004, 550.54.15, 9.0\n"
    "NVIDIA H100 80GB HBM3, 81559, 12345, 550.54.15, 9.0\n"
)
# A driver older than 510 has no compute_cap field: the first query fails, the second has four columns.
OLD_SMI = "Tesla V100-SXM2-16GB, 16160, 16150, 470.182.03\n"

GRAVITON_CPUINFO = "\n\n".join(
    f"processor\t: {p}\nBogoMIPS\t: 243.75\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
    "jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs "
    "paca pacg dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svebf16 "
    "i8mm bf16 dgh rng\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: 0xd4f"
    for p in range(4)
)
GRAVITON_MEMINFO = "MemTotal:        7927704 kB\nMemAvailable:    7200000 kB\n"

# sysctl hw (abbreviated) and vm_stat of a MacBook Pro, M2 Pro, 32 GB.
MAC_SYSCTL_HW = """hw.ncpu: 12
hw.byteorder: 1234
hw.memsize: 34359738368
hw.activecpu: 12
hw.physicalcpu: 12
hw.physicalcpu_max: 12
hw.logicalcpu: 12
hw.logicalcpu_max: 12
hw.optional.arm.FEAT_FP16: 1
hw.optional.arm.FEAT_DotProd: 1
hw.optional.arm.FEAT_I8MM: 1
hw.optional.arm.FEAT_BF16: 1
hw.optional.arm.FEAT_SME: 0
hw.optional.neon: 1
hw.optional.neon_fp16: 1
hw.optional.arm64: 1
hw.pagesize: 16384
"""
MAC_VM_STAT = """Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                               100000.
Pages active:                             700000.
Pages inactive:                           600000.
Pages speculative:                         50000.
Pages throttled:                               0.
Pages wired down:                         300000.
"""


class Recorded:
    """A probe's file reader and command runner that answer from recordings (None: missing)."""

    def __init__(self, files: dict[str, str], commands: dict[str, str | None]) -> None:
        self.files = files
        self.commands = commands
        self.ran: list[list[str]] = []

    def read(self, path: str) -> str | None:
        return self.files.get(path)

    def run(self, argv: Sequence[str]) -> str | None:
        self.ran.append(list(argv))
        return self.commands.get(" ".join(argv))


_SMI_FORMAT = "--format=csv,noheader,nounits"
SMI = f"nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version,compute_cap {_SMI_FORMAT}"
SMI_OLD = f"nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version {_SMI_FORMAT}"


def probe(rec: Recorded, system: str = "Linux", machine: str = "x86_64", nvml=lambda: None) -> Probe:
    return Probe(system=system, machine=machine, read=rec.read, run=rec.run, nvml=nvml, cpu_count=lambda: 99)


def test_intel_server_with_hyperthreading_and_avx512() -> None:
    rec = Recorded({"/proc/cpuinfo": XEON_CPUINFO, "/proc/meminfo": XEON_MEMINFO}, {})
    h = hw.detect(probe(rec))
    assert h.cpu.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert (h.cpu.physical_cores, h.cpu.logical_cores) == (2, 4)
    assert h.cpu.flags == (
        "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
        "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
    )  # fmt: skip
    assert h.memory == hw.Memory(total=65843876 * 1024, available=60123456 * 1024)
    assert h.gpus == () and not h.has_nvidia and h.apple is None and not h.has_metal
    assert sorted({argv[0] for argv in rec.ran}) == ["nvidia-smi"]  # tried, found nothing


def test_h100_box_through_nvidia_smi() -> None:
    rec = Recorded({"/proc/cpuinfo": EPYC_CPUINFO, "/proc/meminfo": H100_MEMINFO}, {SMI: H100_SMI})
    h = hw.detect(probe(rec))
    assert h.cpu.model == "AMD EPYC 9454 48-Core Processor" and h.cpu.logical_cores == 4
    assert "avx512_vnni" in h.cpu.flags and "amx_tile" not in h.cpu.flags
    assert h.memory.total == 2113389124 * 1024
    assert h.gpus == (
        GPU(0, "NVIDIA H100 80GB HBM3", 81559 * MiB, 81004 * MiB, "550.54.15", "9.0"),
        GPU(1, "NVIDIA H100 80GB HBM3", 81559 * MiB, 12345 * MiB, "550.54.15", "9.0"),
    )
    assert h.has_nvidia
    d = h.to_dict()
    assert d["gpus"][1]["memory_free"] == 12345 * MiB and d["cpu"]["flags"][0] == "sse4_2"
    assert "compute 9.0" in hw.describe(h)["GPU 0"]


def test_old_driver_without_compute_cap_is_retried() -> None:
    rec = Recorded({}, {SMI: None, SMI_OLD: OLD_SMI})
    gpus = hw.detect_nvidia(probe(rec))
    assert gpus == (GPU(0, "Tesla V100-SXM2-16GB", 16160 * MiB, 16150 * MiB, "470.182.03", None),)
    assert [argv[1] for argv in rec.ran] == [SMI.split()[1], SMI_OLD.split()[1]]


def test_nvml_is_preferred_to_nvidia_smi() -> None:
    from_nvml = (GPU(0, "NVIDIA H100 80GB HBM3", 80 * GiB, 79 * GiB, "550.54.15", "9.0", "nvml"),)
    rec = Recorded({}, {SMI: H100_SMI})
    assert hw.detect_nvidia(probe(rec, nvml=lambda: from_nvml)) == from_nvml
    assert rec.ran == []


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", ()),
        ("[N/A], [N/A], [N/A], [N/A], [N/A]\n", ()),
        ("garbage without commas\n\n", ()),
        ("NVIDIA A10G, 23028, [N/A], 535.1, 8.6", (GPU(0, "NVIDIA A10G", 23028 * MiB, 0, "535.1", "8.6"),)),
    ],
)
def test_nvidia_smi_parser_tolerates_odd_rows(text: str, expected: tuple[GPU, ...]) -> None:
    assert hw.parse_nvidia_smi(text) == expected


def test_arm64_linux_features() -> None:
    rec = Recorded({"/proc/cpuinfo": GRAVITON_CPUINFO, "/proc/meminfo": GRAVITON_MEMINFO}, {})
    h = hw.detect(probe(rec, machine="aarch64"))
    assert h.cpu.model.startswith("ARM (implementer 0x41")
    assert (h.cpu.physical_cores, h.cpu.logical_cores) == (4, 4)  # no core ids: every processor a core
    assert h.cpu.flags == ("neon", "fp16", "dotprod", "i8mm", "bf16", "sve", "sve2")
    assert h.apple is None


def test_apple_silicon_mac() -> None:
    rec = Recorded(
        {},
        {
            "sysctl hw": MAC_SYSCTL_HW,
            "sysctl -n machdep.cpu.brand_string": "Apple M2 Pro\n",
            "vm_stat": MAC_VM_STAT,
        },
    )
    h = hw.detect(probe(rec, system="Darwin", machine="arm64"))
    assert h.cpu == hw.CPU("Apple M2 Pro", 12, 12, ("neon", "fp16", "dotprod", "i8mm", "bf16"))
    assert h.memory == hw.Memory(32 * GiB, (100000 + 600000 + 50000) * 16384)
    assert h.apple == hw.AppleSilicon("Apple M2 Pro", metal=True) and h.has_metal
    assert h.gpus == ()  # nvidia-smi was asked and is absent


def test_x86_python_under_rosetta_still_finds_apple_silicon() -> None:
    rec = Recorded({}, {"sysctl hw": MAC_SYSCTL_HW, "sysctl -n machdep.cpu.brand_string": "Apple M2 Pro\n"})
    h = hw.detect(probe(rec, system="Darwin", machine="x86_64"))
    assert h.has_metal
    assert h.memory.available == h.memory.total  # no vm_stat: the total rather than nothing


def test_nothing_readable_gives_zeros_not_errors() -> None:
    h = hw.detect(probe(Recorded({}, {}), system="Darwin", machine="arm64"))
    assert h.cpu.logical_cores == 99 and h.memory.total == 0 and h.gpus == ()


# -- this machine ---------------------------------------------------------------------------------------


def test_this_machine_cpu_and_ram() -> None:
    h = hw.detect()
    assert h.system == platform.system() and h.machine == platform.machine()
    assert h.cpu.logical_cores == os.cpu_count()
    assert 1 <= h.cpu.physical_cores <= h.cpu.logical_cores
    assert h.cpu.model
    if Path("/proc/meminfo").is_file():
        meminfo = hw.parse_meminfo(Path("/proc/meminfo").read_text())
        assert h.memory.total == meminfo.total
        assert abs(h.memory.available - meminfo.available) < h.memory.total * 0.05
        cpu_flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                cpu_flags.update(line.split(":", 1)[1].split())
        assert set(h.cpu.flags) <= cpu_flags | set(hw.ARM_FEATURES.values())
        if "avx2" in cpu_flags:
            assert "avx2" in h.cpu.flags
    assert 0 < h.memory.available <= h.memory.total


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_this_machine_without_nvidia_smi_has_no_gpus() -> None:
    assert hw.run_command(["nvidia-smi", "--query-gpu=name", "--format=csv"]) is None
    assert hw.detect_nvidia(Probe()) == ()


def test_run_command_reports_failure_as_none() -> None:
    assert hw.run_command(["sh", "-c", "echo hi"]) == "hi\n"
    assert hw.run_command(["sh", "-c", "echo partial; exit 3"]) is None
    assert hw.run_command(["sleep", "5"], timeout=0.2) is None
    assert hw.read_text("/nonexistent/file") is None
