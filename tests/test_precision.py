import keras
import pytest

from tfmp import precision
from tfmp.errors import PolicyError
from tfmp.hardware import Hardware


@pytest.mark.parametrize("name,use", [("float16", "mixed_float16"), ("bfloat16", "mixed_bfloat16")])
def test_pure_low_precision_is_refused_with_the_mixed_alternative(name, use):
    with pytest.raises(PolicyError) as e:
        precision.resolve(name)
    assert use in str(e.value) and "float32 weights" in str(e.value)


def test_unknown_policy_lists_the_choices():
    with pytest.raises(PolicyError, match="auto, float32, mixed_float16, mixed_bfloat16"):
        precision.resolve("fp8")


@pytest.mark.parametrize("name", precision.POLICIES)
def test_explicit_policy_is_kept_and_says_user_chose_it(name):
    policy = precision.resolve(name, hardware=Hardware(cpu_flags=frozenset({"avx512_bf16"})))
    assert policy.name == name and policy.reason == "chosen by the user"
    assert policy.variable_dtype == "float32"


def test_explicit_bfloat16_on_a_machine_without_it_says_it_is_emulated():
    avx2 = Hardware(cpu_model="AMD EPYC", cpu_flags=frozenset({"avx2", "fma"}))
    policy = precision.resolve("mixed_bfloat16", hardware=avx2)
    assert policy.name == "mixed_bfloat16"  # the user's choice stands
    assert policy.reason.startswith("chosen by the user; this machine has no bfloat16")
    assert "emulates" in policy.reason and "'auto' picks float32" in policy.reason
    assert precision.resolve("mixed_float16", hardware=avx2).reason == "chosen by the user"
    gpu = Hardware(gpus=(("A100", (8, 0)),), cpu_flags=frozenset({"avx2"}))
    assert precision.resolve("mixed_bfloat16", hardware=gpu).reason == "chosen by the user"


def test_only_mixed_float16_needs_loss_scaling():
    assert [precision.resolve(n).loss_scaling for n in precision.POLICIES] == [False, True, False]


@pytest.mark.parametrize(
    "hardware,expected,words",
    [
        (Hardware(gpus=(("A100", (8, 0)),)), "mixed_bfloat16", "8.0"),
        (Hardware(gpus=(("H200", (9, 0)),)), "mixed_bfloat16", "9.0"),
        (Hardware(gpus=(("T4", (7, 5)),)), "mixed_float16", "7.5"),
        (Hardware(gpus=(("V100", (7, 0)),)), "mixed_float16", "loss scaling"),
        (Hardware(gpus=(("P100", (6, 0)),)), "float32", "no tensor cores"),
        (Hardware(tpu=True), "mixed_bfloat16", "TPU"),
        (Hardware(cpu_model="Xeon", cpu_flags=frozenset({"amx_bf16", "avx512_bf16"})),
         "mixed_bfloat16", "AMX"),
        (Hardware(cpu_model="EPYC", cpu_flags=frozenset({"avx512_bf16"}), cpu_bf16_speedup=2.1),
         "mixed_bfloat16", "2.10x"),
        (Hardware(cpu_model="EPYC", cpu_flags=frozenset({"avx512_bf16"}), cpu_bf16_speedup=0.9),
         "float32", "0.90x"),
        (Hardware(cpu_model="EPYC", cpu_flags=frozenset({"avx512_bf16"})), "float32", "probe"),
        (Hardware(cpu_model="Old Xeon", cpu_flags=frozenset({"avx2"})), "float32",
         "no bfloat16 or float16 arithmetic"),
    ],
)
def test_auto_chooses_from_hardware_and_says_why(hardware, expected, words):
    policy = precision.resolve("auto", hardware=hardware)
    assert policy.name == expected
    assert words in policy.reason


def test_auto_on_this_machine_gives_a_policy_and_reason():
    policy = precision.resolve("auto")
    assert policy.name in precision.POLICIES and len(policy.reason) > 20


def test_policy_scope_restores_previous_policy_even_on_error():
    keras.mixed_precision.set_global_policy("float32")
    with pytest.raises(RuntimeError):
        with precision.policy_scope("mixed_float16") as policy:
            assert keras.mixed_precision.global_policy().name == "mixed_float16"
            assert policy.loss_scaling
            raise RuntimeError
    assert keras.mixed_precision.global_policy().name == "float32"


def test_set_global_policy_resolves_and_sets():
    policy = precision.set_global_policy("mixed_bfloat16")
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16" == policy.name


def test_cascade_margin_covers_twice_the_farthest_disagreement_and_the_moved_tail():
    import numpy as np

    slow = np.array([[0.70, 0.20, 0.10]] * 99 + [[0.48, 0.47, 0.05]])
    fast = slow.copy()
    fast[:, 0] += 0.01                      # every input moved 0.01 + 0.01 = 0.02 ...
    fast[:, 2] -= 0.01
    fast[99] = [0.40, 0.44, 0.16]          # ... and one flipped, at int8 margin 0.04
    margin = precision.cascade_margin(fast, slow)
    farthest = precision.answer_margin(fast)[99]
    assert margin == pytest.approx(0.08) and margin > 2 * farthest   # just above twice it
    same = precision.cascade_margin(slow, slow)
    assert same == 0.0                     # int8 equal to float32: nothing re-run
    moved = slow.copy()
    moved[:, 0] += 0.1                     # a move of 0.2, no answer changed
    moved[:, 1] -= 0.1
    assert precision.cascade_margin(moved[:99], slow[:99]) == pytest.approx(0.2)


def test_cascade_margin_holds_the_gate_where_the_largest_disagreement_alone_does_not():
    # int8 as float32 with its logits jittered: 100 validation/test pairs of 1,464
    # inputs, ~8 disagreements each. The gate allows 1 test disagreement that the
    # margin lets through; the farthest validation disagreement alone leaks ~1 on average.
    import numpy as np

    def pair(rng, n=1464):
        logits = rng.normal(0, 2.5, (n, 3))
        jittered = logits + rng.normal(0, 0.03, (n, 3))
        return [np.exp(x) / np.exp(x).sum(-1, keepdims=True) for x in (jittered, logits)]

    def leaks(margin, fast, slow):
        differs = fast.argmax(-1) != slow.argmax(-1)
        return int(np.sum(differs & (precision.answer_margin(fast) >= margin)))

    failed, failed_alone, fast_share = 0, 0, []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        (vf, vs), (tf, ts) = pair(rng), pair(rng)
        margin = precision.cascade_margin(vf, vs)
        failed += leaks(margin, tf, ts) > 1
        differs = vf.argmax(-1) != vs.argmax(-1)
        alone = np.nextafter(precision.answer_margin(vf)[differs].max(), 2.0)
        failed_alone += leaks(alone, tf, ts) > 1
        fast_share.append(np.mean(precision.answer_margin(tf) >= margin))
    assert failed <= 2 and failed_alone >= 8       # measured: 0 and 16
    assert np.median(fast_share) > 0.9              # measured: 0.958
