"""CPU capability detection, the per-CPU ``FastPathOptions.auto`` and ``effvit-sam env``.

The cpuinfo texts are recorded from real machines (x86 ``flags``, ARM ``Features``), trimmed
to the lines the parser reads.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from effvit_sam.cli import main as cli_main
from effvit_sam.inference import cpu_features, optimize
from effvit_sam.inference.cpu_features import (
    CONV_THRESHOLDS,
    ConvThresholds,
    CpuFeatures,
    detect_cpu_features,
    features_from_capabilities,
    features_from_cpuinfo,
)
from effvit_sam.inference.optimize import FastPathOptions


def _x86(vendor: str, model: str, flags: str, family: str | None = None) -> str:
    """A /proc/cpuinfo processor block: the flags (wrapped here) on one line, as the kernel
    writes them."""
    family_line = f"cpu family\t: {family}\n" if family else ""
    return (f"processor\t: 0\nvendor_id\t: {vendor}\n{family_line}model name\t: {model}\n"
            f"flags\t\t: {' '.join(flags.split())}\n")


def _arm(features: str, implementer: str, part: str) -> str:
    """An ARM /proc/cpuinfo processor block (no model name: implementer and part numbers)."""
    return (f"processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: {' '.join(features.split())}\n"
            f"CPU implementer\t: {implementer}\nCPU architecture: 8\nCPU variant\t: 0x1\n"
            f"CPU part\t: {part}\nCPU revision\t: 1\n")


# Intel Xeon Platinum 8480+ (Sapphire Rapids): AVX-512, VNNI, AMX.
XEON_SPR = _x86("GenuineIntel", "Intel(R) Xeon(R) Platinum 8480+", """
fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi mmx
fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc art arch_perfmon pebs
bts rep_good nopl xtopology nonstop_tsc cpuid aperfmperf tsc_known_freq pni pclmulqdq dtes64
monitor ds_cpl vmx smx est tm2 ssse3 sdbg fma cx16 xtpr pdcm pcid dca sse4_1 sse4_2 x2apic
movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand lahf_lm abm 3dnowprefetch
cpuid_fault epb cat_l3 cat_l2 cdp_l3 invpcid_single intel_ppin cdp_l2 ssbd mba ibrs ibpb
stibp ibrs_enhanced tpr_shadow flexpriority ept vpid ept_ad fsgsbase tsc_adjust bmi1 avx2
smep bmi2 erms invpcid cqm rdt_a avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb
intel_pt avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves cqm_llc
cqm_occup_llc cqm_mbm_total cqm_mbm_local split_lock_detect avx_vnni avx512_bf16 wbnoinvd
dtherm ida arat pln pts hfi vnmi avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni vaes
vpclmulqdq avx512_vnni avx512_bitalg tme avx512_vpopcntdq la57 rdpid bus_lock_detect
cldemote movdiri movdir64b enqcmd fsrm md_clear serialize tsxldtrk pconfig arch_lbr ibt
amx_bf16 avx512_fp16 amx_tile amx_int8 flush_l1d arch_capabilities
""")

# AMD EPYC 7B12 (Zen 2): AVX2 only.
EPYC_ZEN2 = _x86("AuthenticAMD", "AMD EPYC 7B12", """
fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse
sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc
cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes
xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse
3dnowprefetch osvw topoext ssbd ibrs ibpb stibp vmmcall fsgsbase tsc_adjust bmi1 avx2 smep
bmi2 rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 clzero xsaveerptr arat
npt nrip_save umip rdpid
""")

# The project's shared 2-core AMD EPYC VM, as its /proc/cpuinfo read when this was written
# (family 26: AVX-512 with BF16 and VNNI, no AMX).
EPYC_VM = _x86("AuthenticAMD", "AMD EPYC", """
fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse
sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology
nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2
x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm
cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext vmmcall fsgsbase
tsc_adjust bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq adx smap avx512ifma clflushopt
clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16
clzero xsaveerptr arat avx512vbmi umip avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni
avx512_bitalg avx512_vpopcntdq rdpid fsrm avx512_vp2intersect
""", family="26")

# Intel Xeon Gold 6248 (Cascade Lake): AVX-512 with VNNI but no BF16 and no AMX.
XEON_CLX = _x86("GenuineIntel", "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", """
fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse
sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid
pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes
xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch invpcid_single pti fsgsbase
tsc_adjust bmi1 hle avx2 smep bmi2 erms invpcid rtm mpx avx512f avx512dq rdseed adx smap
clflushopt clwb avx512cd avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves arat pku ospke
avx512_vnni md_clear arch_capabilities
""")

# This session's 2-core AMD EPYC VM (family 25 model 17, Zen 4): AVX-512 with BF16 and VNNI, no
# AMX, no AVX-VNNI (flags as lscpu printed them).
EPYC_ZEN4 = _x86("AuthenticAMD", "AMD EPYC", """
fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse
sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology
nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2
x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm
cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext cpuid_fault vmmcall
fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap
avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves
avx512_bf16 clzero xsaveerptr arat avx512vbmi umip avx512_vbmi2 gfni vaes vpclmulqdq
avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid fsrm
""", family="25")

# AWS Graviton3 (Neoverse V1): NEON, SVE, BF16; ARM names no model, only implementer and part.
GRAVITON3 = _arm("""
fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma
lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg
dcpodp svei8mm svebf16 i8mm bf16 dgh rng
""", "0x41", "0xd40")

FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
         "amx_tile", "amx_bf16", "amx_int8", "neon", "sve", "arm_bf16")


def _present(f: CpuFeatures) -> set[str]:
    return {name for name in FLAGS if getattr(f, name)}


@pytest.mark.parametrize("text,name,present,tier", [
    (XEON_SPR, "Intel(R) Xeon(R) Platinum 8480+",
     {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
      "amx_tile", "amx_bf16", "amx_int8"}, "amx"),
    (EPYC_ZEN2, "AMD EPYC 7B12", {"avx2"}, "avx2"),
    (EPYC_VM, "AMD EPYC",
     {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16"},
     "avx512"),
    (GRAVITON3, "ARM implementer 0x41 part 0xd40", {"neon", "sve", "arm_bf16"}, "arm"),
], ids=["xeon_amx", "epyc_avx2", "epyc_avx512", "graviton3"])
def test_cpuinfo_flags_to_features(text: str, name: str, present: set[str], tier: str) -> None:
    f = features_from_cpuinfo(text, torch_kernels="AVX2")
    assert _present(f) == present
    assert f.model_name == name and f.tier == tier and f.source == "/proc/cpuinfo"
    assert f.arch == ("aarch64" if tier == "arm" else "x86_64")
    line = f.summary()
    assert name in line and f"tier {tier}" in line and "torch kernels AVX2" in line
    assert all(label in line for label in f.names())


def test_summary_spells_each_feature() -> None:
    xeon = features_from_cpuinfo(XEON_SPR, torch_kernels="AVX512")
    assert xeon.names() == ["AVX2", "AVX-512(F/BW/VL)", "AVX512-VNNI", "AVX-VNNI",
                            "AVX512-BF16", "AMX-TILE", "AMX-BF16", "AMX-INT8"]
    assert features_from_cpuinfo(GRAVITON3, torch_kernels="SVE256").names() == [
        "NEON", "SVE", "ARM-BF16"]
    bare = features_from_cpuinfo("flags\t\t: fpu sse sse2\n", torch_kernels="DEFAULT")
    assert bare.tier == "baseline" and "no vector extensions detected" in bare.summary()
    # AVX-512F alone (no BW/VL, as on Knights Landing) is not oneDNN's avx512_core.
    knl = features_from_cpuinfo("flags : avx2 avx512f avx512cd\n", torch_kernels="AVX2")
    assert knl.avx512f and not knl.avx512 and knl.tier == "avx2"
    with pytest.raises(ValueError, match="no 'flags'"):
        features_from_cpuinfo("processor : 0\nvendor_id : X\n", torch_kernels="DEFAULT")


def test_torch_capabilities_and_cpuinfo_agree() -> None:
    # The same Xeon as torch.cpu.get_capabilities() spells it (cpuinfo library keys).
    caps = {"architecture": "x86_64", "cpu_name": "Intel(R) Xeon(R) Platinum 8480+",
            "avx2": True, "avx512_f": True, "avx512_bw": True, "avx512_vl": True,
            "avx512_vnni": True, "avx_vnni": True, "avx512_bf16": True, "avx512_fp16": True,
            "amx_tile": True, "amx_bf16": True, "amx_int8": True, "amx_fp16": False,
            "num_logical_cores": 224}
    from_torch = features_from_capabilities(caps, torch_kernels="AVX512")
    from_text = features_from_cpuinfo(XEON_SPR, torch_kernels="AVX512")
    assert from_torch.source == "torch.cpu.get_capabilities"
    assert dataclasses.replace(from_torch, source="x") == dataclasses.replace(from_text,
                                                                             source="x")
    arm = features_from_capabilities({"architecture": "arm64", "neon": True, "sve": True,
                                      "bf16": False}, torch_kernels="SVE256")
    assert _present(arm) == {"neon", "sve"} and arm.tier == "arm"
    assert arm.model_name == "unknown CPU"


def test_detect_this_machine_and_the_cpuinfo_fallback(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    here = detect_cpu_features()
    assert here is detect_cpu_features()  # once per process
    assert here.torch_kernels == torch.backends.cpu.get_cpu_capability()
    if hasattr(torch.cpu, "_is_avx2_supported"):  # torch's own private queries agree
        assert here.avx2 == torch.cpu._is_avx2_supported()
        assert here.avx512f == torch.cpu._is_avx512_supported()
        assert here.avx512_bf16 == torch.cpu._is_avx512_bf16_supported()
        assert here.amx_tile == torch.cpu._is_amx_tile_supported()
    # Without torch.cpu.get_capabilities (torch < 2.9): /proc/cpuinfo.
    fake = tmp_path / "cpuinfo"
    fake.write_text(XEON_SPR)
    monkeypatch.setattr(cpu_features, "CPUINFO", fake)
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    detect_cpu_features.cache_clear()
    try:
        xeon = detect_cpu_features()
        assert xeon.source == "/proc/cpuinfo" and xeon.tier == "amx"
        fake.unlink()
        detect_cpu_features.cache_clear()
        with pytest.raises(RuntimeError, match="cannot detect CPU features"):
            detect_cpu_features()
    finally:
        detect_cpu_features.cache_clear()


def _auto_on(monkeypatch: pytest.MonkeyPatch, text: str) -> tuple[FastPathOptions, dict]:
    feats = features_from_cpuinfo(text, torch_kernels="AVX2")
    monkeypatch.setattr(optimize, "detect_cpu_features", lambda: feats)
    # oneDNN's bf16 convolution as on that CPU (it needs AVX-512), not as on this one
    monkeypatch.setattr(optimize, "onednn_bf16_conv_available", lambda: feats.avx512)
    return FastPathOptions.auto_explained("cpu")


@pytest.mark.parametrize("text,tier", [(XEON_SPR, "amx"), (EPYC_ZEN2, "avx2"),
                                       (EPYC_VM, "avx512"), (EPYC_ZEN4, "avx512"),
                                       (XEON_CLX, "avx512"), (GRAVITON3, "arm")],
                         ids=["xeon_amx", "epyc_avx2", "epyc_zen5", "epyc_zen4", "xeon_clx",
                              "graviton3"])
def test_auto_per_cpu_kind(monkeypatch: pytest.MonkeyPatch, text: str, tier: str) -> None:
    opts, why = _auto_on(monkeypatch, text)
    assert opts == FastPathOptions.auto("cpu")  # auto is auto_explained's choice
    assert set(why) == {f.name for f in dataclasses.fields(FastPathOptions)}
    assert not opts.int8_encoder and not opts.compile and opts.fuse_neck and opts.keep_freed_memory
    t = CONV_THRESHOLDS[tier]
    assert (opts.winograd_min_channels, opts.gemm_min_in_channels) == (
        t.winograd_min_channels, t.gemm_min_in_channels)
    assert f"tier {tier}" in why["winograd_min_channels"]
    assert ("not re-measured" in why["gemm_min_in_channels"]) == (tier not in ("avx2", "amx"))
    bf16_why = why["autocast_dtype"]
    feats = optimize.detect_cpu_features()
    if tier == "amx" or (tier == "avx512" and feats.avx512_bf16):
        # AMX or AVX512-BF16: a bf16 encoder (masks measured >= 99.5% equal) with oneDNN's fused
        # epilogues, without the float32 conv rewrites; exact() is the float32 choice there.
        unit = "AMX-BF16" if tier == "amx" else "AVX512-BF16"
        assert opts == FastPathOptions.bf16()
        assert opts.autocast_dtype is torch.bfloat16 and opts.onednn_epilogues
        assert not (opts.winograd or opts.gemm_pointwise)
        assert bf16_why.startswith(f"bf16: {unit} is here") and "99.5%" in bf16_why
        assert why["winograd"].startswith("off: a float32 rewrite")
        exact, exact_why = FastPathOptions.auto_explained("cpu", exact=True)
        assert exact == FastPathOptions.exact("cpu") and exact.autocast_dtype is None
        assert exact.winograd and exact.gemm_pointwise
        # oneDNN's post-ops pay in float32 only where measured so (AMX), in bf16 everywhere
        assert exact.onednn_epilogues == (tier == "amx")
        assert exact_why["autocast_dtype"].startswith(
            f"off: exact() keeps float32 (auto picks bf16 on this {unit} CPU)")
    else:
        # Everywhere else float32 and exact by default, and exact() changes nothing: AVX-512
        # without BF16 and ARM's BF16 (not measured) included.
        assert opts.autocast_dtype is None and opts.winograd and opts.gemm_pointwise
        assert not opts.onednn_epilogues and "not measured faster" in why["onednn_epilogues"]
        assert FastPathOptions.exact("cpu") == opts
        assert ("not measured on this kind" if tier == "arm" else "no bf16 units") in bf16_why
    assert ("VNNI int8 dot products here" in why["int8_encoder"]) == (tier in ("amx", "avx512"))


def test_auto_without_onednn_keeps_the_unfused_epilogues(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optimize, "onednn_conv_available", lambda: False)
    opts, why = _auto_on(monkeypatch, XEON_SPR)
    assert opts.autocast_dtype is torch.bfloat16 and not opts.onednn_epilogues
    assert why["onednn_epilogues"] == "off: this torch build has no oneDNN convolution"
    assert not FastPathOptions.bf16().onednn_epilogues


def test_auto_takes_the_widths_of_the_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CONV_THRESHOLDS, "arm", ConvThresholds(32, 512, "measured in a test"))
    opts, why = _auto_on(monkeypatch, GRAVITON3)
    assert (opts.winograd_min_channels, opts.gemm_min_in_channels) == (32, 512)
    assert why["winograd_min_channels"] == "tier arm: measured in a test"
    # The bf16 set is this CPU's auto with the float32 conv rewrites off, oneDNN's epilogues on
    # where oneDNN has a bf16 convolution (as simulated by _auto_on).
    bf16 = FastPathOptions.bf16()
    assert bf16 == opts.with_(autocast_dtype=torch.bfloat16, winograd=False, gemm_pointwise=False,
                              onednn_epilogues=optimize.onednn_bf16_conv_available())
    assert CONV_THRESHOLDS.keys() == {"amx", "avx512", "avx2", "arm", "baseline"}


def test_auto_compiled_gelu_follows_the_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    for found in (True, False):
        monkeypatch.setattr(optimize, "cxx_compiler_available", lambda _f=found: _f)
        opts, why = FastPathOptions.auto_explained("cpu")
        assert opts.compiled_gelu is found
        assert why["compiled_gelu"].startswith("a C++ compiler was found" if found
                                               else "no C++ compiler")


def test_env_command_names_each_option_and_a_reason(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    feats = features_from_cpuinfo(XEON_SPR, torch_kernels="AVX512")
    from effvit_sam.tools import env

    monkeypatch.setattr(optimize, "detect_cpu_features", lambda: feats)
    monkeypatch.setattr(env, "detect_cpu_features", lambda: feats)
    assert cli_main(["env"]) == 0
    out = capsys.readouterr().out
    assert "machine: Intel(R) Xeon(R) Platinum 8480+ (x86_64)" in out
    assert f"torch: {torch.__version__}" in out and "ATen CPU kernels" in out
    assert "oneDNN" in out and "MKL" in out
    assert f"cpu features: {feats.summary()}" in out
    _, why = FastPathOptions.auto_explained("cpu")
    lines = out.splitlines()
    for field in dataclasses.fields(FastPathOptions):
        row = [line for line in lines if line.strip().startswith(f"{field.name} ")]
        assert len(row) == 1, field.name
        assert row[0].rstrip().endswith(why[field.name]) and why[field.name]
    assert cli_main(["env", "--device", "nonsense"]) == 2
    assert "effvit-sam env: error: --device 'nonsense'" in capsys.readouterr().err


def test_bench_report_carries_the_feature_line() -> None:
    from argparse import Namespace

    from effvit_sam.tools.bench_report import markdown_table, summarise

    args = Namespace(model="tiny", threads=2, batch=1, runs=1, warmup=0, prompts=1,
                     engines=[], sam=[])
    report = summarise(args, [], torch.device("cpu"))
    assert report["config"]["cpu_features"] == detect_cpu_features().summary()
    assert f"CPU: {detect_cpu_features().summary()}" in markdown_table(report)


@pytest.mark.parametrize("text,warns", [(EPYC_ZEN2, True), (XEON_SPR, False), (EPYC_VM, False)])
def test_bf16_warns_where_it_is_emulated(monkeypatch: pytest.MonkeyPatch, caplog, tiny_model,
                                         text: str, warns: bool) -> None:
    """bf16 on a CPU without AMX-BF16 / AVX512-BF16 is emulated (measured 9x slower than
    float32 on an AVX2 EPYC): asking for it there says so; where bf16 units exist it does not."""
    feats = features_from_cpuinfo(text, torch_kernels="AVX2")
    assert feats.bf16_units is not warns
    monkeypatch.setattr(optimize, "detect_cpu_features", lambda: feats)
    with caplog.at_level("WARNING", logger="effvit_sam.inference.optimize"):
        optimize.optimize_for_inference(
            tiny_model, device="cpu", options=FastPathOptions.bf16().with_(compiled_gelu=False))
    emulated = [r for r in caplog.records if "without bf16 units" in r.getMessage()]
    assert len(emulated) == (1 if warns else 0)
    if warns:
        assert feats.model_name in emulated[0].getMessage()
