"""The CPU line printed with every benchmark table."""

from jaxvgg.core.machine import describe_cpu, parse_cpuinfo

AVX2_EPYC = """processor\t: 0
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse2 avx avx2 fma bmi2
processor\t: 1
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse2 avx avx2 fma bmi2
"""
AMX_XEON = (
    "model name : Intel(R) Xeon(R) Platinum 8481C\n"
    "flags : avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8\n"
)


def test_the_model_and_the_extensions_that_decide_kernels_are_read_off_cpuinfo():
    assert parse_cpuinfo(AVX2_EPYC) == ("AMD EPYC 7B12", ["AVX2", "FMA"])
    model, features = parse_cpuinfo(AMX_XEON)
    assert model == "Intel(R) Xeon(R) Platinum 8481C"
    assert features == ["AVX2", "FMA", "AVX-512", "AVX-512 VNNI", "AVX-512 BF16", "AMX", "AMX-BF16", "AMX-INT8"]
    assert parse_cpuinfo("") == ("", [])


def test_this_machine_is_described_with_its_core_count():
    assert " cores" in describe_cpu()
