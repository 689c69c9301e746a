"""The worked solution of every exercise, shown and then checked by `solution("05.2")` (every lesson)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .common import Spec
from .lesson00 import _spec_good_images, _spec_quality, check_good_images, check_quality
from .lesson01 import (
    _spec_arcface_logit,
    _spec_fc_parameters,
    _spec_pair_accuracy,
    check_arcface_logit,
    check_fc_parameters,
    check_pair_accuracy,
)
from .lesson02 import (
    _spec_fit_boundary,
    _spec_logits_batch,
    _spec_training_state_bytes,
    check_fit_boundary,
    check_logits_batch,
    check_training_state_bytes,
)
from .lesson03 import _spec_partial_fc_columns, _spec_unsampled_drift, check_partial_fc_columns, check_unsampled_drift
from .lesson04 import _spec_ema_half_life, _spec_ema_value, check_ema_half_life, check_ema_value
from .lesson05 import _spec_attention_weight, _spec_weight_ratio, check_attention_weight, check_weight_ratio
from .lesson06 import _spec_max_weight, _spec_mean_cosine, check_max_weight, check_mean_cosine
from .lesson07 import _spec_container_bytes, _spec_identities_present, check_container_bytes, check_identities_present
from .lesson08 import _spec_attfc_loss, _spec_logit_bytes, check_attfc_loss, check_logit_bytes
from .lesson09 import (
    _spec_encoder_k_bytes,
    _spec_images_per_step,
    _spec_self_key_share,
    check_encoder_k_bytes,
    check_images_per_step,
    check_self_key_share,
)
from .lesson10 import (
    _spec_embedding_grad_bytes,
    _spec_rank_container_bytes,
    _spec_shard_bytes,
    check_embedding_grad_bytes,
    check_rank_container_bytes,
    check_shard_bytes,
)


@dataclass(frozen=True)
class Exercise:
    """One exercise: its title, the reasoning of its solution, and either the code that computes
    the answer (run and then checked by `check`, with `spec` giving the expected value and slips)
    or, for an open exercise, the expected outcome."""

    title: str
    reasoning: str
    code: str | None = None
    check: Callable | None = None
    spec: Callable[[], Spec] | None = None


_OPEN_END = "Open exercise: no check. Compare your own run with the outcome above."

EXERCISES: dict[str, Exercise] = {
    "00.1": Exercise(
        "the ground-truth quality of image 3 of identity 42 (seed 0)",
        "The quality is 1 - severity, and the severity is drawn from (seed, identity, image) alone, so\n"
        "`world.quality` gives it without rendering a pixel. It takes tensors of identities and image\n"
        "indices (counted from 0) and returns one quality per pair.",
        "world = FaceWorld(seed=0)\n"
        "answer = float(world.quality(torch.tensor([42]), torch.tensor([3]))[0])",
        check_quality, _spec_quality),
    "00.2": Exercise(
        "how many of the first 100 images of identity 7 have a quality above 0.8",
        "Ask for the 100 qualities at once (identity 7 repeated 100 times, image indices 0 to 99),\n"
        "compare with 0.8 and count the True values.",
        "world = FaceWorld(seed=0)\n"
        "quality = world.quality(torch.full((100,), 7), torch.arange(100))\n"
        "answer = int((quality > 0.8).sum())",
        check_good_images, _spec_good_images),
    "00.3": Exercise(
        "(open) identity 3 rendered with FaceWorld(seed=0, max_severity=0.0)",
        "max_severity scales the severity of every image, so at 0 every degradation is gone (no blur, noise,\n"
        "downscaling or occlusion) and every quality is exactly 1: `world.quality` returns 1.0 for all images.\n"
        "What stays: the identity's face (its latent parameters) and each image's nuisance (pose, shift,\n"
        "rotation, scale, expression, lighting, colour, background), which are drawn from the same hash as\n"
        "before. The lesson measures nothing here, so there is no spread to compare with.\n"
        "Hard to match: the nuisances that change the face's appearance the most, such as a large head\n"
        "rotation or pose, strong lighting or colour changes and expression; with degradations on, strong\n"
        "occlusion, blur and downscaling remove the details that tell two people apart."),
    "01.1": Exercise(
        "the ArcFace logit of an embedding at cosine 0.8 to its centre (s = 64, m = 0.5)",
        "ArcFace adds the margin to the angle: θ = arccos(0.8) (in radians, as math.acos returns it),\n"
        "then the target logit is s · cos(θ + m).",
        "answer = 64 * math.cos(math.acos(0.8) + 0.5)",
        check_arcface_logit, _spec_arcface_logit),
    "01.2": Exercise(
        "parameters of the FC head's W for MS1MV3 (93,431 identities, embedding_dim 512)",
        "W holds one class centre of embedding_dim numbers per identity, and the head has no bias.",
        "answer = 93_431 * 512",
        check_fc_parameters, _spec_fc_parameters),
    "01.3": Exercise(
        "accuracy of 'same person if score > 0.5' on seven pairs",
        "Decide 'same' where the score is above 0.5: 0.9, 0.6, 0.7 and 0.8. Compared with is_same, the\n"
        "rule is right on pairs 0, 1, 2, 5 and 6, counting from 0 (0.4 is a genuine pair it rejects, 0.7\n"
        "an impostor it accepts): 5 of 7. (The TAR, 3 of the 4 genuine pairs, is another figure.)",
        "scores = [0.9, 0.2, 0.6, 0.4, 0.7, 0.1, 0.8]\n"
        "is_same = [True, False, True, True, False, False, True]\n"
        "answer = sum((sc > 0.5) == same for sc, same in zip(scores, is_same)) / len(scores)",
        check_pair_accuracy, _spec_pair_accuracy),
    "01.4": Exercise(
        "(open) retrain without a margin, then with CosFace m = 0.35",
        "Without a margin (margin_m=0.0) the target class only has to win, not win by an angle, so the\n"
        "training loss ends lower. Expected outcome, measured (CPU defaults, seeds 0 and 1): ArcFace 0.894\n"
        "and 0.887, no margin 0.891 and 0.882, CosFace m = 0.35 0.882 and 0.879. The gaps are about the\n"
        "size of the seed-to-seed spread (0.007): on this small synthetic task the margin is not what\n"
        "limits accuracy. Judge any difference against that spread, not one run."),
    "02.1": Exercise(
        "bytes of W, its gradient and the SGD momentum for WebFace42M (D = 512, float32)",
        "Three N x D float32 tensors (W, W.grad and the momentum buffer), 4 bytes a number.\n"
        "(About 11.8 GiB: already half a 24 GiB card before the step's temporaries.)",
        "answer = 3 * 2_059_906 * 512 * 4",
        check_training_state_bytes, _spec_training_state_bytes),
    "02.2": Exercise(
        "the largest N whose FC step fits in 24 GiB (D = 512, B = 128, float32, SGD with momentum)",
        "Held between steps: W and the momentum (2 N D e) and the batch (B D e + 8 B).\n"
        "Largest phase (B < D): the F.normalize(W) backward, the gradient reaching normalize(W) and four\n"
        "N x D temporaries (5 N D e), plus the embeddings' gradient (B D e). So peak(N) = 7 N D e + 2 B D e + 8 B <= 24 x 2**30 bytes,\n"
        "and the largest whole N is the floor of the solution.",
        "D, B, e = 512, 128, 4\n"
        "answer = (24 * 2**30 - 2 * B * D * e - 8 * B) // (7 * D * e)",
        check_fit_boundary, _spec_fit_boundary),
    "02.3": Exercise(
        "the smallest batch from which a logits phase sets the peak (D = 512, N = 100,000)",
        "forward = (N D e + 2 N e) + B D e + 4 B N e, and backward: centres = 5 N D e + B D e.\n"
        "forward >= centres  <=>  4 B N e >= 4 N D e - 2 N e  <=>  B >= D - 1/2: the smallest whole B is D.",
        "D = 512\n"
        "answer = D",
        check_logits_batch, _spec_logits_batch),
    "03.1": Exercise(
        "logit columns of one Partial FC step (N = 1,000,000, r = 0.1, B = 128)",
        "S = max(ceil(r N), positives): a batch of 128 has at most 128 distinct identities, far fewer than\n"
        "ceil(0.1 x 1,000,000), so the sample size is set by the rate.",
        "answer = max(math.ceil(0.1 * 1_000_000), 128)",
        check_partial_fc_columns, _spec_partial_fc_columns),
    "03.2": Exercise(
        "how far an unsampled centre moves in two steps, in units of lr * b",
        "Its gradient is 0, so each step first decays the buffer (buf = 0.9 buf) and then moves the centre\n"
        "by lr buf: 0.9 lr b, then 0.81 lr b.",
        "answer = 0.9 + 0.9 ** 2",
        check_unsampled_drift, _spec_unsampled_drift),
    "03.3": Exercise(
        "(open) Partial FC against full FC at 4,000 identities, and the memory ratio (3 + r) / 7",
        "Expected outcome, as the lesson states it (two seeds of each head): full FC 0.722 ± 0.007, Partial FC\n"
        "(r = 0.1, S = 400 columns: ~126 own identities and ~274 others) 0.683 ± 0.013, a gap of 3.9 points\n"
        "(3.2 and 4.6 on seeds 0 and 1) against 4.5 at 1,000 x 16: not smaller beyond the seeds' spread.\n"
        "Both heads fall far, because N and the images per identity changed together: 4 images of an\n"
        "identity teach its centre much less than 16. To isolate the number of negatives, keep the data and\n"
        "vary S alone (lesson 03's sweep does: r = 0.3 with 300 columns wins back a third of the loss).\n"
        "The memory ratio: full FC's peak is about 7 N D e, W and the momentum held (2) plus the\n"
        "F.normalize(W) backward, five N x D tensors at once (5). Partial FC's peak, for large N, is the\n"
        "scatter of the gradient: W and the momentum (2), the dense N x D W.grad (1) and the gradient of the\n"
        "r N gathered rows (r), so (3 + r) N D e: the ratio tends to (3 + r) / 7."),
    "04.1": Exercise(
        "a parameter of encoder_k after two EMA steps (1.0 towards 3.0, m = 0.9)",
        "θ_k ← m θ_k + (1 - m) θ_q, twice: 0.9 x 1 + 0.1 x 3 = 1.2, then 0.9 x 1.2 + 0.1 x 3 = 1.38.",
        "theta_k = 1.0\n"
        "for _ in range(2):\n"
        "    theta_k = 0.9 * theta_k + 0.1 * 3.0\n"
        "answer = theta_k",
        check_ema_value, _spec_ema_value),
    "04.2": Exercise(
        "the half-life of a step's weight in the EMA (m = 0.99)",
        "The version from n steps ago weighs (1 - m) m^n, m^n times the newest one's. m^n <= 1/2 <=>\n"
        "n >= ln(1/2) / ln(m) = 68.97 (ln(m) < 0 flips the inequality), so the smallest whole n is 69.",
        "answer = math.ceil(math.log(0.5) / math.log(0.99))",
        check_ema_half_life, _spec_ema_half_life),
    "04.3": Exercise(
        "(open) final training loss with ema_momentum = 0.9 against the default 0.999",
        "Expected outcome, as the lesson states it (the stored sweep's three seeds,\n"
        "sweep['runs'][i]['final_loss']): 9.48 ± 0.04 with m = 0.9 and 12.14 ± 0.26 with m = 0.999;\n"
        "your live runs should land within about twice those spreads.\n"
        "A too-easy positive would give the lower loss, so m = 0.9's lower loss agrees with the hypothesis,\n"
        "but does not prove it: with m = 0.999 the key encoder still holds about half of its random start,\n"
        "so every GCC, the positive and the container's negatives alike, is further from what encoder_q\n"
        "computes, which raises the loss whatever the positive's difficulty. A sharper test looks at the\n"
        "positive alone, e.g. the query's cosine to its own GCC in both runs."),
    "05.1": Exercise(
        "the attention weight of the first of two keys (cosines 0.8 and 0.4, T = 1)",
        "The weights are the softmax of the cosines over T: e^0.8 / (e^0.8 + e^0.4) = 1 / (1 + e^-0.4).",
        "answer = math.exp(0.8) / (math.exp(0.8) + math.exp(0.4))",
        check_attention_weight, _spec_attention_weight),
    "05.2": Exercise(
        "the largest ratio of two keys' weights at T = 0.5",
        "w_i / w_j = exp((c_i - c_j) / T), and two cosines differ by at most 2 (from -1 to 1):\n"
        "the largest ratio is e^(2 / T) = e^4.",
        "answer = math.exp(2 / 0.5)",
        check_weight_ratio, _spec_weight_ratio),
    "05.3": Exercise(
        "(open) quality_study again at temperature 0.1",
        "Expected outcome, as the lesson states it (two trained models): the weights spread out (largest /\n"
        "smallest per query about 220 instead of 1.4), the share of identities whose most-weighted key is the\n"
        "best one is exactly the same, and the Spearman correlation over all keys moves a little (0.199 ->\n"
        "0.205 and 0.202 -> 0.206), those by degradation type by up to 0.04.\n"
        "Why: dividing the cosines by T and taking a softmax keeps the order of one query's keys, so the\n"
        "most-weighted key of each query cannot change. The Spearman correlation is computed over all keys\n"
        "of all queries together; each query's softmax stretches its own weights differently, so the\n"
        "ranking of weights across queries changes, and with it the rank correlation."),
    "06.1": Exercise(
        "the cosine to the TCC of the mean of K = 4 keys, if one key has 0.6",
        "For a unit centre c and an error e perpendicular to it, cos = 1 / sqrt(1 + |e|^2): one key at 0.6\n"
        "gives |e|^2 = 1 / 0.36 - 1. The mean of 4 keys is c + (mean of the errors), of squared length\n"
        "|e|^2 / 4 on average for independent errors. About 0.83, against about 0.70 measured (one key:\n"
        "0.61): an identity's images share part of their error (its embeddings cluster around a point that\n"
        "is not the TCC), and averaging cannot remove what they share.",
        "x = 1 / 0.6 ** 2 - 1\n"
        "answer = 1 / math.sqrt(1 + x / 4)",
        check_mean_cosine, _spec_mean_cosine),
    "06.2": Exercise(
        "the largest weight one of K = 8 keys can get (T = 1)",
        "One key at cosine 1, the seven others at -1: e^1 / (e^1 + 7 e^-1) = e^2 / (e^2 + 7), about 0.51.\n"
        "Even in the most extreme case the GCC keeps half of its weight on the other keys.",
        "answer = math.exp(2) / (math.exp(2) + 7)",
        check_max_weight, _spec_max_weight),
    "06.3": Exercise(
        "(open) gcc_vs_tcc again with temperature 0.1",
        "Expected outcome, as the lesson states it: the GCC now falls below the plain mean for K = 4 and 8,\n"
        "by about 0.005 and 0.007 in cosine in the stored run (95 % intervals of about ±0.0015; another run\n"
        "gave 0.004 and 0.006, an FC model trained with seed 1 0.002 and 0.005), while at K = 2 the\n"
        "difference is within noise (about -0.001 ± 0.002).\n"
        "Why: attention weighs the keys by their cosine to the query, and the query is a single image, a\n"
        "poor centre itself (cosine about 0.61 to the TCC). A sharper attention puts most of the weight on\n"
        "the keys most like the query: the GCC averages fewer keys, so less of their error cancels, and it\n"
        "leans towards the query's own error instead of the identity's centre."),
    "07.1": Exercise(
        "bytes of a container of ratio 0.1 for WebFace42M (D = 512, fp32 centres)",
        "Q = floor(0.1 x 2,059,906) = 205,990 entries, each 512 fp32 numbers (4 bytes) and one int64 label\n"
        "(8 bytes). About 404 MiB.",
        "Q = math.floor(0.1 * 2_059_906)\n"
        "answer = Q * (512 * 4 + 8)",
        check_container_bytes, _spec_container_bytes),
    "07.2": Exercise(
        "the share of N = 1,000 identities with an entry among Q = 600 uniformly drawn labels",
        "One identity misses one entry with probability 1 - 1/N, and all Q independent entries with\n"
        "(1 - 1/N)^Q; the share present is one minus that (about 1 - e^(-Q/N), which is right too).",
        "answer = 1 - (1 - 1 / 1000) ** 600",
        check_identities_present, _spec_identities_present),
    "07.3": Exercise(
        "(open) the turnover watch with dcc_ratio = 1.0 (Q = 1,000)",
        "Expected outcome, as the lesson states it (seeds 0, 1 and 2, set with TrainConfig(seed=...)):\n"
        "62.0 % ± 0.1 % of the queries meet their own identity, with 0.94 ± 0.01 own entries each; 64.4 % ±\n"
        "0.1 % of the identities are present (exercise 2's formula: 63.2 %); the entries are 4.4 steps old on\n"
        "average and the oldest 8 steps old when used.\n"
        "Why slightly fewer queries than identities: within an epoch each image is drawn once, so an\n"
        "identity that was just in a batch, and so has entries in the container, has fewer images left to\n"
        "draw. The next batches' queries come a little more often from identities not seen lately, which\n"
        "are less likely to be present."),
    "08.1": Exercise(
        "the AttFC loss of one query (cosine 0.8 to its GCC, entries at 0.3 and at 0.9 of its own identity)",
        "The entry of the query's own identity (0.9) is masked out of the softmax. The logits are the GCC\n"
        "column with the ArcFace margin, z0 = s cos(arccos 0.8 + 0.5), and s x 0.3 for the other entry;\n"
        "the loss is the cross-entropy log(e^z0 + e^(32 x 0.3)) - z0.",
        "z0 = 32 * math.cos(math.acos(0.8) + 0.5)\n"
        "answer = math.log(math.exp(z0) + math.exp(32 * 0.3)) - z0",
        check_attfc_loss, _spec_attfc_loss),
    "08.2": Exercise(
        "bytes of the fused loss's B x Q fp32 buffer (WebFace42M, ratio 0.3, B = 128)",
        "Q = floor(0.3 x 2,059,906) = 617,971 columns, 128 rows, 4 bytes each (about 302 MiB).",
        "Q = math.floor(0.3 * 2_059_906)\n"
        "answer = 128 * Q * 4",
        check_logit_bytes, _spec_logit_bytes),
    "08.3": Exercise(
        "(open) AttFC with K = 2",
        "Expected outcome, as the lesson states it (lesson 05's stored K sweep, data/sweeps/k.json): 10-fold\n"
        "accuracy 0.858 ± 0.016 (seeds 0.842 and 0.875), between the DCQ-style head and K = 4; TAR at 1e-3\n"
        "0.129 ± 0.009, below K = 4's 0.166; a head step at N = 100,000 0.13 MiB below K = 4's (two fewer keys\n"
        "of 128 floats for each of 128 queries: 2 x 128 x 128 x 4 bytes); on an idle machine, images per\n"
        "second between the DCQ-style head's and K = 4's.\n"
        "What limits K is not the head but the key images: each step embeds B (1 + K) images (exercise 09.2),\n"
        "B K of them through encoder_k, with their activations and the data pipeline's rendering or loading.\n"
        "On a GPU, with large batches and a large backbone, that is compute time and activation memory, so\n"
        "K = 2 buys most of the benefit of several keys at the lowest cost."),
    "09.1": Exercise(
        "bytes AttFC's key encoder adds for a backbone of 43.6 million fp32 weights",
        "One copy of the weights, 4 bytes each; no gradient and no optimizer state, since it moves by EMA\n"
        "under no_grad. About 166 MiB.",
        "answer = 4 * 43_600_000",
        check_encoder_k_bytes, _spec_encoder_k_bytes),
    "09.2": Exercise(
        "images through a backbone in one AttFC step (B = 128, K = 4)",
        "The 128 queries go through encoder_q and their 4 x 128 key images through encoder_k; the backward\n"
        "pass embeds nothing again.",
        "answer = 128 * (1 + 4)",
        check_images_per_step, _spec_images_per_step),
    "09.3": Exercise(
        "the share of queries with a key that is the query image (3 images per identity, K = 2)",
        "Each of the K keys is drawn among the identity's n images, the query included, so it is the query\n"
        "with probability 1/n, independently of the other keys. No key is the query with probability\n"
        "(1 - 1/n)^K; at least one is, with the rest: 1 - (2/3)^2 = 5/9, about 56 % of the queries.",
        "answer = 1 - (1 - 1 / 3) ** 2",
        check_self_key_share, _spec_self_key_share),
    "09.4": Exercise(
        "(open) AttFC at 10 times full FC's limit under the same budget",
        "Expected outcome, as the stored run gave it: full FC's limit is about 21,000 identities (16-pixel faces,\n"
        "100 MiB), AttFC trains at 5x, and at 10x (N = 209,540 there) it runs out of memory in its first\n"
        "step. The allocation that failed asked for 8,046,336 bytes. With Q = floor(0.3 x 209,540) = 62,862\n"
        "container entries, that is B x Q = 128 x 62,862 bytes: one byte per logit, a bool tensor, the mask\n"
        "that finds the container's entries of each query's own identity (lesson 07). It is not the largest\n"
        "tensor of the step: the fused loss's B x Q fp32 logits (lesson 08) are four times larger\n"
        "(32,185,344 bytes) and were allocated just before it. An out-of-memory error names the allocation\n"
        "that crossed the cap, the last straw, not the largest one. Why at this N, with no W: the container\n"
        "(Q x D floats and an int64 label each, 31 MiB here) and every B x Q buffer grow in proportion to N,\n"
        "so AttFC's memory still grows with N, through Q, if far more slowly than full FC's; a smaller\n"
        "container ratio (--dcc-ratio) moves its limit, at the accuracy cost lesson 07 measured. Your own run\n"
        "may name another buffer of the same step if its N differs a little from the stored one's."),
    "10.1": Exercise(
        "bytes of one rank's shard of W and its momentum (WebFace42M, D = 512, P = 8)",
        "2,059,906 rows over 8 ranks: 257,488 each and 2 left over, so `shard_range` gives the first two ranks\n"
        "257,489 rows; the largest shard is ceil(N / P). Between steps a rank holds that shard and its\n"
        "momentum buffer (the gradient lives only during the step): two copies of ceil(N / P) x D fp32\n"
        "numbers, about 0.98 GiB, an eighth of the 7.9 GiB one process holds.",
        "rows = math.ceil(2_059_906 / 8)  # the largest shard\n"
        "answer = 2 * rows * 512 * 4",
        check_shard_bytes, _spec_shard_bytes),
    "10.2": Exercise(
        "bytes one rank sends in the all-reduce of the embedding gradient (B = 64 per rank, D = 512, P = 16)",
        "Every rank's logits used all P x B gathered embeddings, so each rank holds a partial gradient of all\n"
        "of them: a [P x B, D] fp32 tensor, 16 x 64 x 512 x 4 bytes (2 MiB), summed over the ranks by an\n"
        "all-reduce. A ring all-reduce cuts the tensor into P chunks and sends (P - 1) of them in its\n"
        "reduce-scatter and (P - 1) in its all-gather: 2 (P - 1) / P of the tensor from each rank,\n"
        "2 x 15 x 64 x 512 x 4 bytes (3.75 MiB), whatever N is. Once answered, the library gives the same:\n"
        "traffic_per_step(\"fc\", N, 512, 64, 16)[\"embedding_grad\"] for any N.",
        "tensor = 16 * 64 * 512 * 4  # the gradient of the 16 x 64 gathered embeddings, in bytes\n"
        "answer = 2 * (16 - 1) * tensor // 16",
        check_embedding_grad_bytes, _spec_embedding_grad_bytes),
    "10.3": Exercise(
        "bytes of AttFC's container on one rank of 32 (Glint360K, D = 512, ratio 0.3)",
        "Every rank enqueues the GCCs and labels of all 32 ranks (an all-gather), so each holds the whole\n"
        "container, the same as one process: Q = floor(0.3 x 360,232) = 108,069 entries of D fp32 numbers\n"
        "and an int64 label, about 212 MiB on each of the 32 ranks. Once answered, the library gives the same:\n"
        "predict_memory(360_232, 512, 128, head=\"attfc\", world_size=32).terms[\"container\"].",
        "Q = math.floor(0.3 * 360_232)\n"
        "answer = Q * (512 * 4 + 8)",
        check_rank_container_bytes, _spec_rank_container_bytes),
    "10.4": Exercise(
        "(open) one rank's memory measured over four processes",
        "Expected outcome, as measured on two CPU cores when the lesson was written: each of the two\n"
        "measurements takes 10 to 40 s (four processes share two cores). Full FC's ranks peak at 23.4 MiB\n"
        "(N = 20,000, D = 64, B = 64) and AttFC's at 3.4 MiB; the model gives the same within 0.1 % for every\n"
        "rank. The four ranks of full FC differ from each other by a few kilobytes; AttFC's are equal.\n"
        "From P = 2 to P = 4 full FC's peak falls from 27.0 to 23.4 MiB only: its shard of W, the shard's\n"
        "momentum and its normalised copy halve again (7.4 to 3.7 MiB together), but its largest buffers do\n"
        "not move: four B x N buffers (two terms of 9.8 MiB, `logits` and `head_temporaries`), the logits of\n"
        "the P x B gathered rows against ceil(N / P) columns and the margin's temporaries. Two small terms\n"
        "grow: `gathered_batch` (33 to 66 KiB) and `embedding_temporaries` (32 to 64 KiB) double with P, the\n"
        "P x B gathered embeddings; that growth (about 1 MiB each at P = 64) is why the peak rises again from\n"
        "21.0 MiB at P = 32 to 21.8 at P = 64. AttFC's peak does not move at all: its container is whole on\n"
        "every rank."),
}


def _normalise_id(exercise) -> str:
    text = str(exercise).strip()
    lesson, dot, number = text.partition(".")
    if dot and lesson.isdigit() and number.isdigit():
        text = f"{int(lesson):02d}.{int(number)}"
    if text not in EXERCISES:
        raise ValueError(f"unknown exercise {exercise!r}: the exercises are {', '.join(EXERCISES)} "
                         "(lesson.number, e.g. solution(\"05.2\"))")
    return text


def _show(value) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
        value = int(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.6g}"


def solution(exercise: str) -> None:
    """Print the worked solution of an exercise ("05.2": lesson 05, exercise 2): the reasoning and
    the computation, then run the exercise's check on the result. Open exercises print their
    expected outcome instead."""
    key = _normalise_id(exercise)
    ex = EXERCISES[key]
    print(f"Exercise {key}: {ex.title}\n")
    print(ex.reasoning)
    if ex.code is None:
        print("\n" + _OPEN_END)
        return
    from ..faces import FaceWorld

    namespace = {"math": math, "torch": torch, "FaceWorld": FaceWorld}
    exec(ex.code, namespace)  # the code shown is the code run
    answer = namespace["answer"]
    print("\n" + "\n".join("    " + line for line in ex.code.splitlines()))
    print(f"answer = {_show(answer)}\n")
    ex.check(answer)
