"""Behaviour signal: a small causal Transformer over interaction sequences, trained on next-item prediction.

The output layer is tied to the item-embedding table (plus a per-item bias), so `user_vector(history)` and
`item_vectors()` share one dot-product space (the index's `behaviour` named vector, Dot distance).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from rag_rec.errors import ModelError, require
from rag_rec.settings import BehaviourSettings
from rag_rec.signals.als import NotFittedError, _top

PAD = 0
TRAINING_VERSION = 3  # raise when a change to fit() makes networks cached by earlier code stale


def _build_network(n_items: int, settings: BehaviourSettings, dropout: float):
    """An nn.Module mapping right-padded item-index sequences (B, L) to hidden states (B, L, dim)."""
    torch = require("torch", "text")
    nn = torch.nn

    class SequenceEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.items = nn.Embedding(n_items + 1, settings.dim, padding_idx=PAD)
            self.item_bias = nn.Embedding(n_items + 1, 1, padding_idx=PAD)
            self.positions = nn.Embedding(settings.max_len, settings.dim)
            layer = nn.TransformerEncoderLayer(settings.dim, settings.heads, dim_feedforward=4 * settings.dim,
                                               dropout=dropout, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, settings.layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(settings.dim)
            self.dropout = nn.Dropout(dropout)
            nn.init.normal_(self.items.weight, std=settings.dim ** -0.5)
            nn.init.normal_(self.positions.weight, std=0.02)
            nn.init.zeros_(self.item_bias.weight)
            with torch.no_grad():
                self.items.weight[PAD].zero_()

        def forward(self, seq):
            length = seq.shape[1]
            positions = torch.arange(length, device=seq.device)
            x = self.dropout(self.items(seq) + self.positions(positions)[None])
            # Right padding + causal mask: real positions never attend to the padding after them.
            causal = torch.triu(torch.full((length, length), float("-inf"), device=seq.device), diagonal=1)
            return self.norm(self.encoder(x, mask=causal, is_causal=True))

    return SequenceEncoder()


def _heap_push_kernel(heap, size, value):
    """Keep the len(heap) largest values seen in the min-heap `heap` of `size` values; returns the new size."""
    m = heap.shape[0]
    if size < m:
        j = size
        heap[j] = value
        while j > 0 and heap[(j - 1) >> 1] > heap[j]:
            heap[(j - 1) >> 1], heap[j] = heap[j], heap[(j - 1) >> 1]
            j = (j - 1) >> 1
        return size + 1
    if value > heap[0]:
        heap[0] = value
        j = 0
        while 2 * j + 1 < m:
            c = 2 * j + 1
            if c + 1 < m and heap[c + 1] < heap[c]:
                c += 1
            if heap[j] <= heap[c]:
                break
            heap[j], heap[c] = heap[c], heap[j]
            j = c
    return size


def _best_range(matrix, query, excluded, m):
    """(best, m-th best) of matrix @ query over the rows not in the sorted `excluded`: one pass, a min-heap of m."""
    heap = np.empty(m, dtype=np.float32)
    size, best, x = 0, -np.inf, 0
    for i in range(matrix.shape[0]):
        if x < excluded.shape[0] and excluded[x] == i:
            x += 1
            continue
        acc = np.float32(0.0)
        for d in range(matrix.shape[1]):
            acc += matrix[i, d] * query[d]
        best = max(best, acc)
        if size < m or acc > heap[0]:
            size = _heap_push(heap, size, acc)
    return best, heap[0]


def _quantized_range(codes, scales, matrix, query, excluded, m, stride):
    """_best_range's exact answer from a quarter of its reads: the rows' int8 codes bound each logit within
    scale / 2 per unit of |query|_1; a strided sample of the lower bounds gives a threshold that at least m rows
    reach, so the m best lie among the rows whose upper bound reaches it, and only those are scored in float32.
    Falls back to the full scan when the sample's threshold does not hold."""
    n, dims = codes.shape
    l1 = np.float32(0.0)
    for d in range(dims):
        l1 += abs(query[d])
    margin = np.float32(0.51) * l1  # 0.5: rounding to the code; 0.01 covers float32 sums with room
    approx = np.empty(n, dtype=np.float32)
    for i in range(n):
        acc = np.float32(0.0)
        for d in range(dims):
            acc += np.float32(codes[i, d]) * query[d]
        approx[i] = acc * scales[i]
    for x in range(excluded.shape[0]):
        approx[excluded[x]] = -np.inf
    sample = np.empty(max(1, (3 * m) // (2 * stride) + 1), dtype=np.float32)
    size = 0
    for i in range(0, n, stride):
        low = approx[i] - scales[i] * margin
        if size < sample.shape[0] or low > sample[0]:
            size = _heap_push(sample, size, low)
    threshold = sample[0]
    if size < sample.shape[0] or threshold == -np.inf:
        return _best_range_jit(matrix, query, excluded, m)
    rows = np.empty(n, dtype=np.int64)
    found = holding = 0
    for i in range(n):
        if approx[i] - scales[i] * margin >= threshold:
            holding += 1
        if approx[i] + scales[i] * margin >= threshold:
            rows[found] = i
            found += 1
    if holding < m:
        return _best_range_jit(matrix, query, excluded, m)
    heap = np.empty(m, dtype=np.float32)
    size, best = 0, -np.inf
    for r in range(found):
        i = rows[r]
        acc = np.float32(0.0)
        for d in range(dims):
            acc += matrix[i, d] * query[d]
        best = max(best, acc)
        if size < m or acc > heap[0]:
            size = _heap_push(heap, size, acc)
    return best, heap[0]


def _quantize_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes, float32 scales) with matrix[i] ~= scales[i] * codes[i], each element within scales[i] / 2."""
    peak = np.abs(matrix).max(axis=1) if matrix.size else np.zeros(len(matrix), dtype=np.float32)
    scales = (peak / 127).astype(np.float32)
    codes = np.rint(matrix / np.where(scales > 0, scales, 1)[:, None]).clip(-127, 127).astype(np.int8)
    return np.ascontiguousarray(codes), scales


_heap_push, _best_range_jit = _heap_push_kernel, _best_range


@lru_cache(maxsize=1)
def _range_kernel():
    """(full scan, quantized scan) compiled by numba (the `fast` extra), or None without it. _quantized_range calls
    the other two, so they are bound to module globals first."""
    global _heap_push, _best_range_jit
    try:
        import numba
    except ImportError:
        return None
    jit = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
    _heap_push = numba.njit(cache=True, nogil=True, inline="always")(_heap_push_kernel)
    full = jit(_best_range)
    _best_range_jit = full
    return full, jit(_quantized_range)


class _NumpyEncoder:
    """The trained SequenceEncoder's inference for one sequence, in numpy: the last position's hidden state. Torch
    spends ~0.25 ms of dispatch per layer on a 20-item sequence; this runs the same float32 maths in a tenth of it,
    and the last layer computes the last position alone."""

    def __init__(self, net):
        def array(t):
            return t.detach().cpu().numpy().astype(np.float32, copy=True)

        self.items, self.positions = array(net.items.weight), array(net.positions.weight)
        self.layers = [(array(layer.norm1.weight), array(layer.norm1.bias), layer.norm1.eps,
                        array(layer.self_attn.in_proj_weight).T.copy(), array(layer.self_attn.in_proj_bias),
                        array(layer.self_attn.out_proj.weight).T.copy(), array(layer.self_attn.out_proj.bias),
                        array(layer.norm2.weight), array(layer.norm2.bias), layer.norm2.eps,
                        array(layer.linear1.weight).T.copy(), array(layer.linear1.bias),
                        array(layer.linear2.weight).T.copy(), array(layer.linear2.bias))
                       for layer in net.encoder.layers]
        self.heads = net.encoder.layers[0].self_attn.num_heads
        self.norm = (array(net.norm.weight), array(net.norm.bias), net.norm.eps)

    @staticmethod
    def _layer_norm(x, weight, bias, eps):
        centred = x - x.mean(axis=-1, keepdims=True)
        return centred / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + np.float32(eps)) * weight + bias

    def last_hidden(self, encoded: tuple[int, ...]) -> np.ndarray:
        length, heads = len(encoded), self.heads
        x = self.items[list(encoded)] + self.positions[:length]
        causal = np.triu(np.full((length, length), -np.inf, dtype=np.float32), 1)
        for n, (n1w, n1b, eps1, w_in, b_in, w_out, b_out, n2w, n2b, eps2, w1, b1, w2, b2) in enumerate(self.layers):
            dim = x.shape[1]
            qkv = self._layer_norm(x, n1w, n1b, eps1) @ w_in + b_in
            queries, mask = (qkv[:, :dim], causal) if n < len(self.layers) - 1 else (qkv[-1:, :dim], None)
            if mask is None:
                x = x[-1:]
            per_head = dim // heads
            q = queries.reshape(len(queries), heads, per_head).transpose(1, 0, 2)
            k = qkv[:, dim:2 * dim].reshape(length, heads, per_head).transpose(1, 2, 0)
            v = qkv[:, 2 * dim:].reshape(length, heads, per_head).transpose(1, 0, 2)
            scores = q @ k / np.float32(np.sqrt(per_head))
            if mask is not None:
                scores = scores + mask
            weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
            attended = (weights / weights.sum(axis=-1, keepdims=True)) @ v
            x = x + attended.transpose(1, 0, 2).reshape(len(queries), dim) @ w_out + b_out
            x = x + np.maximum(self._layer_norm(x, n2w, n2b, eps2) @ w1 + b1, 0) @ w2 + b2
        return self._layer_norm(x[-1], *self.norm)


class BehaviourModel:
    """ItemScorer from sequences: the user's time-ordered history (plus the anchors) encodes a query vector.

    Training sequences are user histories and the dataset's sessions; session order is shuffled each epoch
    (a session is a set). Full softmax over the catalogue up to `sampled_softmax_above` items, sampled
    softmax (uniform negatives, accidental hits masked) beyond. Logits are h·e_item + b_item; vectors carry
    the bias as a last slot. Strong dropout / weight decay (bias not decayed) suit sparse data like Amazon
    bundles, where most items occur once.
    """

    name = "behaviour"

    def __init__(self, settings: BehaviourSettings | None = None, *, batch_size: int = 64, dropout: float = 0.5,
                 weight_decay: float = 3.0, sampled_softmax_above: int = 20_000, negatives: int = 2048,
                 shuffle_sessions: bool = True, filter_seen: bool = True, max_results: int | None = 1000,
                 threads: int | None = 1, progress: bool = True, query_cache: int = 4096):
        self.settings = settings or BehaviourSettings()
        self.batch_size, self.dropout, self.weight_decay = batch_size, dropout, weight_decay
        self.sampled_softmax_above, self.negatives = sampled_softmax_above, negatives
        self.shuffle_sessions, self.filter_seen, self.max_results = shuffle_sessions, filter_seen, max_results
        self.threads, self.progress, self.query_cache = threads, progress, query_cache
        self.item_ids: list[str] = []
        self._item_index: dict[str, int] = {}
        self.histories: dict[str, list[str]] = {}
        self.loss_history: list[float] = []
        self._net = None
        self._item_matrix: np.ndarray | None = None
        self.quantized_scan_from = 16_384  # catalogue rows from which _range reads int8 codes first

    # ---- data -------------------------------------------------------------------------------------------
    def training_sequences(self, dataset) -> tuple[list[list[int]], list[bool]]:
        """(sequences of item indexes, whether each is an unordered session) from histories and sessions."""
        sequences: list[list[int]] = []
        unordered: list[bool] = []
        for history in self.histories.values():
            encoded = [self._item_index[i] for i in history if i in self._item_index]
            if len(encoded) >= 2:
                sequences.append(encoded)
                unordered.append(False)
        for session in dataset.sessions.values():
            encoded = [self._item_index[i] for i in session.items if i in self._item_index]
            if len(encoded) >= 2:
                sequences.append(encoded)
                unordered.append(True)
        return sequences, unordered

    def _windows(self, sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and next-item targets, right-padded to max_len; long sequences become several windows."""
        span = self.settings.max_len + 1
        inputs, targets = [], []
        for seq in sequences:
            starts = range(0, len(seq) - 1, self.settings.max_len) if len(seq) > span else [0]
            for start in starts:
                window = seq[start:start + span]
                if len(window) < 2:
                    continue
                row_in = np.zeros(self.settings.max_len, dtype=np.int64)
                row_out = np.zeros(self.settings.max_len, dtype=np.int64)
                row_in[:len(window) - 1] = window[:-1]
                row_out[:len(window) - 1] = window[1:]
                inputs.append(row_in)
                targets.append(row_out)
        return np.stack(inputs), np.stack(targets)

    # ---- training ---------------------------------------------------------------------------------------
    def fit(self, dataset) -> BehaviourModel:
        """Train from scratch on `threads` torch threads (restored afterwards): ops this small gain nothing
        from more, and oversubscribed cores slow them down badly."""
        torch = require("torch", "text")
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            return self._fit(torch, dataset)
        finally:
            torch.set_num_threads(previous)

    def _fit(self, torch, dataset) -> BehaviourModel:
        """Train; a failure (no sequence to train on, an interrupt) leaves the model as it was."""
        before = (self.item_ids, self._item_index, self.histories, self.loss_history)
        try:
            return self._train(torch, dataset)
        except BaseException:
            self.item_ids, self._item_index, self.histories, self.loss_history = before
            raise

    def _train(self, torch, dataset) -> BehaviourModel:
        from tqdm.auto import tqdm

        frame = dataset.interactions.frame
        frame = frame[frame["user_id"].notna() & frame["item_id"].notna()]
        self._use_items(list(dataset.products))
        self.histories = {str(u): [str(i) for i in items]
                          for u, items in frame.groupby("user_id", sort=False)["item_id"]}
        sequences, unordered = self.training_sequences(dataset)
        if not sequences:
            raise ModelError(f"dataset {dataset.name!r} has no sequence of 2+ known items to train on")

        rng = np.random.default_rng(self.settings.seed)
        torch.manual_seed(self.settings.seed)
        net = _build_network(len(self.item_ids), self.settings, self.dropout)
        decayed = [p for n, p in net.named_parameters() if p.dim() > 1 and n != "item_bias.weight"]
        undecayed = [p for n, p in net.named_parameters() if not (p.dim() > 1 and n != "item_bias.weight")]
        optimiser = torch.optim.AdamW([{"params": decayed, "weight_decay": self.weight_decay},
                                       {"params": undecayed, "weight_decay": 0.0}], lr=self.settings.lr)
        sampled = len(self.item_ids) > self.sampled_softmax_above
        self.loss_history = []
        drawn = np.zeros(len(self.item_ids) + 1, dtype=bool)
        net.train()
        epochs = tqdm(range(self.settings.epochs), desc="behaviour model", unit="epoch", disable=not self.progress)
        for _ in epochs:
            epoch_sequences = [list(rng.permutation(s)) if shuffle and self.shuffle_sessions else s
                               for s, shuffle in zip(sequences, unordered)]
            inputs, targets = self._windows(epoch_sequences)
            order = rng.permutation(len(inputs))[: self.settings.max_windows_per_epoch]
            drawn[inputs[order]] = drawn[targets[order]] = True
            total, count = 0.0, 0
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                seq = torch.from_numpy(inputs[batch])
                target = torch.from_numpy(targets[batch])
                hidden = net(seq)
                mask = target != PAD
                h, t = hidden[mask], target[mask]
                loss = self._sampled_loss(torch, net, h, t, rng) if sampled else self._full_loss(torch, net, h, t)
                optimiser.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                optimiser.step()
                total += float(loss.detach()) * int(mask.sum())
                count += int(mask.sum())
            self.loss_history.append(total / max(count, 1))
            epochs.set_postfix(loss=f"{self.loss_history[-1]:.3f}")
        net.eval()
        drawn[PAD] = False
        self._net = self._trained_items_only(torch, net, np.flatnonzero(drawn))
        self._refresh_item_matrix()
        return self

    def _trained_items_only(self, torch, net, trained: np.ndarray):
        """The network over the `trained` items (network rows some drawn training window held, as input or target);
        the others become unknown to the model, like items outside the catalogue. Their vectors never left their
        initialisation, and the tied output layer ranked them above trained items (62% / 94% of its top 100 on
        electronic / clothing, where they are 14% / 17% of the catalogue), so in an offline split it singled out
        the held-out sessions' items. A sequence whose windows no epoch drew (`max_windows_per_epoch`) trains
        nothing either: 566 of Dunnhumby's 68,125 sequence items."""
        if len(trained) == len(self.item_ids):
            return net
        keep = torch.from_numpy(np.concatenate([[PAD], trained]))
        state = net.state_dict()
        state["items.weight"], state["item_bias.weight"] = state["items.weight"][keep], state["item_bias.weight"][keep]
        smaller = _build_network(len(trained), self.settings, self.dropout)
        smaller.load_state_dict(state)
        smaller.eval()
        self._use_items([self.item_ids[i - 1] for i in trained.tolist()])
        return smaller

    def _use_items(self, item_ids: list[str]) -> None:
        """The model's items, each at its network index (1-based: 0 is padding)."""
        self.item_ids = item_ids
        self._item_index = {item: i + 1 for i, item in enumerate(item_ids)}

    @staticmethod
    def _full_loss(torch, net, hidden, target):
        logits = hidden @ net.items.weight[1:].T + net.item_bias.weight[1:, 0]
        return torch.nn.functional.cross_entropy(logits, target - 1)

    def _sampled_loss(self, torch, net, hidden, target, rng):
        negatives = torch.from_numpy(rng.integers(1, len(self.item_ids) + 1, size=self.negatives))
        positive = (hidden * net.items(target)).sum(-1, keepdim=True) + net.item_bias(target)
        negative = hidden @ net.items(negatives).T + net.item_bias(negatives)[:, 0]
        negative = negative.masked_fill(negatives[None, :] == target[:, None], float("-inf"))
        logits = torch.cat([positive, negative], dim=1)
        return torch.nn.functional.cross_entropy(logits, torch.zeros(len(target), dtype=torch.long))

    def _refresh_item_matrix(self) -> None:
        torch = require("torch", "text")
        weights = torch.cat([self._net.items.weight[1:], self._net.item_bias.weight[1:]], dim=1)
        self._use_item_matrix(weights.detach().cpu().numpy().astype(np.float32, copy=True))
        self._encoder = _NumpyEncoder(self._net)
        self._encoded_vector = lru_cache(maxsize=self.query_cache)(self._encode)
        self._catalogue_range = lru_cache(maxsize=self.query_cache)(self._range)

    def _use_item_matrix(self, matrix: np.ndarray) -> None:
        self._item_matrix = matrix
        self._codes, self._scales = _quantize_rows(matrix)
        # below the smallest normal float32 a scale loses the precision its error bound needs: scan in full
        self._codes_bound_exactly = bool(((self._scales == 0) | (self._scales >= np.finfo(np.float32).tiny)).all())

    # ---- inference --------------------------------------------------------------------------------------
    def _require_fitted(self):
        if self._net is None:
            raise NotFittedError("BehaviourModel is not fitted; call fit(dataset) or BehaviourModel.load(path)")
        return self._net

    @property
    def dim(self) -> int:
        """Size of user/item vectors: the model dim plus one slot carrying the item bias."""
        return self.settings.dim + 1

    def item_vectors(self) -> tuple[list[str], np.ndarray]:
        """(item ids, float32 [output embedding, bias]); dot with user_vector() gives next-item logits."""
        self._require_fitted()
        return list(self.item_ids), self._item_matrix.copy()

    def user_vector(self, history: Sequence[str]) -> np.ndarray | None:
        """[encoding of the last max_len known items of `history`, 1]; None when none is known. Recent
        sequences are remembered (`query_cache` of them): a shopper's follow-up requests skip the network."""
        self._require_fitted()
        encoded = self._sequence(history)
        return self._encoded_vector(encoded) if encoded else None

    def _sequence(self, *parts: Sequence[str]) -> tuple[int, ...]:
        """The last max_len known items of `parts` (in order), as the network's item indexes; read from the end, so
        a history of thousands of items costs max_len lookups."""
        index, wanted = self._item_index, self.settings.max_len
        tail: list[int] = []
        for part in reversed(parts):
            for i in reversed(part):
                j = index.get(i)
                if j is not None:
                    tail.append(j)
                    if len(tail) == wanted:
                        return tuple(reversed(tail))
        return tuple(reversed(tail))

    def _encode(self, encoded: tuple[int, ...]) -> np.ndarray:
        vector = np.append(self._encoder.last_hidden(encoded).astype(np.float32), np.float32(1.0))
        vector.flags.writeable = False  # shared by every request with this sequence
        return vector

    def extend_histories(self, events) -> None:
        """Append (user, item) events to the histories the user vectors read (no retraining)."""
        for user, item in events:
            self.histories.setdefault(str(user), []).append(str(item))

    def scaled_scores(self, anchors: Sequence[str], user_id: str | None, items: Sequence[str]) -> np.ndarray | None:
        """score()'s logits of `items` alone, min-max scaled over the `max_results` best of the catalogue (the best
        1, the last of them 0; logits may be negative); 0 for items outside them, unknown or excluded (the anchors
        and, with filter_seen, the history). None when neither the history nor the anchors hold a known item.
        The served fusion's feature: the catalogue scan is cached per sequence, the pool is scored alone."""
        self._require_fitted()
        history = self.histories.get(user_id, ()) if user_id is not None else ()
        index = self._item_index
        encoded = self._sequence(history, anchors)
        if not encoded:
            return None
        excluded = set(anchors) | (set(history) if self.filter_seen else set())
        excluded_rows = tuple(sorted(index[i] - 1 for i in excluded if i in index))
        hi, lo = self._catalogue_range(encoded, excluded_rows)
        rows = np.array([-1 if i in excluded else index.get(i, 0) - 1 for i in items], dtype=np.int64)
        scaled = np.zeros(len(rows))
        known = rows >= 0
        logits = self._item_matrix[rows[known]] @ self._encoded_vector(encoded)
        ranked = logits >= lo
        scaled[np.flatnonzero(known)[ranked]] = (np.clip((logits[ranked] - lo) / (hi - lo), 0.0, 1.0) if hi > lo
                                                 else 1.0)
        return scaled

    def _range(self, encoded: tuple[int, ...], excluded_rows: tuple[int, ...]) -> tuple[float, float]:
        """(best, max_results-th best) logit over the catalogue without the excluded rows: score()'s range, in one
        compiled pass (from `quantized_scan_from` rows, over int8 codes first, still exact); without numba, the
        logits and a partition."""
        query = self._encoded_vector(encoded)
        finite = len(self._item_matrix) - len(excluded_rows)
        if finite <= 0:
            return np.inf, np.inf
        m = min(self.max_results or finite, finite)
        kernels = _range_kernel()
        if kernels is not None:
            full, quantized = kernels
            rows = np.array(excluded_rows, dtype=np.int64)
            if len(self._item_matrix) >= self.quantized_scan_from and self._codes_bound_exactly:
                best, last = quantized(self._codes, self._scales, self._item_matrix, query, rows, m, 16)
            else:
                best, last = full(self._item_matrix, query, rows, m)
            return float(best), float(last)
        scores = self._item_matrix @ query
        scores[list(excluded_rows)] = -np.inf
        return float(scores.max()), float(np.partition(scores, len(scores) - m)[len(scores) - m])

    def score(self, anchors: Sequence[str], user_id: str | None = None) -> dict[str, float]:
        self._require_fitted()
        history = list(self.histories.get(user_id, [])) if user_id is not None else []
        query = self.user_vector(history + list(anchors))
        if query is None:
            return {}
        scores = self._item_matrix @ query
        excluded = {self._item_index[a] - 1 for a in anchors if a in self._item_index}
        if self.filter_seen:
            excluded.update(self._item_index[i] - 1 for i in history if i in self._item_index)
        scores[list(excluded)] = -np.inf
        return _top(self.item_ids, scores, self.max_results)

    # ---- persistence ------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        net = self._require_fitted()
        torch = require("torch", "text")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({
            "format": 1,
            "settings": self.settings.model_dump(mode="json"),
            "dropout": self.dropout,
            "item_ids": self.item_ids,
            "histories": self.histories,
            "loss_history": self.loss_history,
            "state_dict": net.state_dict(),
        }, path)
        return path

    @classmethod
    def load(cls, path: str | Path, **kwargs) -> BehaviourModel:
        payload = cls._read(path)
        model = cls(BehaviourSettings(**payload["settings"]), **{"dropout": payload["dropout"], **kwargs})
        return model._restore(payload, path)

    @staticmethod
    def _read(path: str | Path) -> dict:
        torch = require("torch", "text")
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()  # torch.load does not check the stored CRCs of the tensors
        except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
            raise ModelError(f"cannot read behaviour model {path}: {exc}") from exc
        if damaged is not None:
            raise ModelError(f"behaviour model {path} is damaged: {damaged} fails its checksum")
        try:
            payload = torch.load(Path(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged pickle raises KeyError / IndexError too
            raise ModelError(f"cannot read behaviour model {path}: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != 1:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise ModelError(f"{path} is not a behaviour model file (format {found!r})")
        return payload

    def _restore(self, payload: dict, path: str | Path) -> BehaviourModel:
        try:
            item_ids = list(payload["item_ids"])
            net = _build_network(len(item_ids), self.settings, self.dropout)
            net.load_state_dict(payload["state_dict"])
            histories = {u: list(h) for u, h in payload["histories"].items()}
            losses = list(payload["loss_history"])
        except (KeyError, RuntimeError, TypeError, AttributeError) as exc:
            raise ModelError(f"behaviour model {path} does not match its settings: {exc}") from exc
        net.eval()
        self.histories, self.loss_history, self._net = histories, losses, net
        self._use_items(item_ids)
        self._refresh_item_matrix()
        return self

    def training_key(self, dataset) -> str:
        """sha256 of everything fit() reads: the settings and options that shape training, the catalogue's ids in
        order, every (user, item) event in order and every session's items. Equal keys train equal networks."""
        import pandas as pd

        h = hashlib.sha256(f"behaviour training {TRAINING_VERSION}".encode())
        shaping = self.settings.model_dump(mode="json", exclude={"serve", "cache_dir"})
        options = [self.batch_size, self.dropout, self.weight_decay, self.sampled_softmax_above, self.negatives,
                   self.shuffle_sessions]
        h.update(json.dumps([shaping, options], sort_keys=True).encode())
        h.update("\x1f".join(map(str, dataset.products)).encode())
        frame = dataset.interactions.frame[["user_id", "item_id"]].astype(str)
        h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        for session in dataset.sessions.values():
            h.update(("\x1e" + "\x1f".join(map(str, session.items))).encode())
        return h.hexdigest()

    def cache_path(self, dataset, cache_dir: str | Path) -> Path:
        """Where fit_cached keeps the network it trains on `dataset` with these settings."""
        return Path(cache_dir) / f"behaviour-{self.training_key(dataset)[:32]}.pt"

    def fit_cached(self, dataset, cache_dir: str | Path | None, log=None) -> BehaviourModel:
        """fit(), or the network an earlier fit with the same training_key saved under `cache_dir`, so a restart on
        unchanged data loads in seconds instead of training for minutes. An unreadable file is trained over; a
        cache that cannot be written only costs the next start its fit. None: always fit."""
        if cache_dir is None:
            return self.fit(dataset)
        path = self.cache_path(dataset, cache_dir)
        if path.is_file():
            try:
                self._restore(self._read(path), path)
                if log:
                    log(f"behaviour model: loaded {path} (trained on this data with these settings)")
                return self
            except ModelError as exc:
                if log:
                    log(f"behaviour model: {exc}; training again")
        self.fit(dataset)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        try:
            self.save(partial)
            os.replace(partial, path)
        except (OSError, RuntimeError) as exc:  # torch's file writer reports a failed open or write as RuntimeError
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            if log:
                log(f"behaviour model: cannot keep the trained network in {cache_dir} ({exc}); the next start trains")
        return self
