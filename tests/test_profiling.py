"""--profile: which family an operator's name puts it in, and which steps can be profiled (the run itself: test_pretrain.py)."""

import pytest
import torch

from granite_cli.errors import BadInput
from granite_cli.training.profiling import StepProfiler, family, parse_steps


@pytest.mark.parametrize("name, expected", [
    ("aten::addmm", "matmul"), ("aten::mm", "matmul"), ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n", "matmul"),
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT", "matmul"),
    ("flash_fwd_kernel", "attention"), ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("aten::logsumexp", "loss head"), ("aten::_log_softmax_backward_data", "loss head"),
    ("_liger_fused_linear_cross_entropy_kernel", "loss head"),
    ("aten::_foreach_mul_", "optimizer"), ("void at::native::multi_tensor_apply_kernel<...>", "optimizer"),
    ("ncclDevKernel_AllReduce_Sum_f32_RING_LL", "communication"),
    ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0", "norm"),
    ("aten::add_", "other"), ("triton_poi_fused_silu_mul_1", "other"),
    ("## Call CompiledFxGraph fxgmtgqieulai3rmsgemm ##", "compiled graph"),  # whatever letters its hash has
])
def test_operators_fall_in_the_family_their_name_says(name, expected):
    assert family(name) == expected


@pytest.mark.parametrize("text, steps, expected", [("4:6", 10, (4, 6)), ("3", 10, (3, 3)), (" 2 : 10 ", 10, (2, 10))])
def test_the_steps_to_profile_parse(text, steps, expected):
    assert parse_steps(text, steps) == expected


@pytest.mark.parametrize("text, message", [("6:4", "not be after"), ("0:2", "count from 1"), ("4:12", "has 10 steps"),
                                           ("four", "FIRST:LAST"), ("4-6", "FIRST:LAST")])
def test_steps_that_cannot_be_profiled_are_refused(text, message):
    with pytest.raises(BadInput, match=message):
        parse_steps(text, 10)


def test_a_run_resumed_inside_the_window_profiles_nothing_rather_than_half(tmp_path):
    profiler = StepProfiler((2, 3), tmp_path / "out.profile", torch.device("cpu"))
    with profiler.step(3):  # step 2 ran before the resume
        with profiler.region("forward"):
            torch.ones(4) @ torch.ones(4)
    assert not profiler.active and not (tmp_path / "out.profile").exists()
