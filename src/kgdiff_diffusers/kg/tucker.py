"""TuckER knowledge-graph embeddings (Balazevic et al. 2019) with sparse 1-N training.

The score of a triple is the Tucker product ``W x1 e_h x2 e_r x3 e_t`` of a core tensor ``W``
``(d, d, d)`` with the head, relation and tail embeddings. Training is 1-N: each unique
``(head, relation)`` pair of the training graph is scored against every entity at once and
fitted with binary cross-entropy against label-smoothed 0/1 rows. Every triple is also trained
in reverse as ``(tail, relation + num_relations, head)`` (reciprocal relations), so the relation
table has ``2 * num_relations`` rows, forward relations first.

The 0/1 label rows are built per batch from a sorted index of known tails, so memory is
``O(batch_size * num_entities)``, never ``O(num_pairs * num_entities)``.
"""

from __future__ import annotations

import copy
import gzip
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .graph import KnowledgeGraph

logger = logging.getLogger(__name__)

TRIPLE_HEADER = ("head", "relation", "tail")
EMBEDDING_KEYS = ("entity_embeddings", "relation_embeddings")
# One default and one meaning for every script that pretrains TuckER (prepare_data, train, pretrain_kg).
DEFAULT_TUCKER_EPOCHS = 100
TUCKER_EPOCHS_HELP = (
    "TuckER maximum epochs; training ends at this epoch, at --tucker_max_steps or --tucker_max_seconds, or after "
    "--patience (5) epochs without a better validation MRR, whichever comes first"
)
TUCKER_MAX_SECONDS_HELP = (
    "TuckER wall-clock budget in seconds (default: none); the epoch limit still applies. The embeddings then depend "
    "on the machine's speed and load: --tucker_max_steps is the reproducible budget"
)
TUCKER_MAX_STEPS_HELP = "TuckER optimiser-step budget (default: none); the epoch limit still applies"


def tucker_budget_problems(epochs: int, max_steps: int | None, max_seconds: float | None) -> list[str]:
    """What is wrong with a TuckER budget, e.g. ``["max_steps must be >= 1, got 0"]`` (scripts prefix ``--tucker_``).

    A time budget <= 0 or NaN would train one step and save the embeddings as if trained.
    """
    problems = [] if epochs >= 1 else [f"epochs must be >= 1, got {epochs}"]
    if max_steps is not None and max_steps < 1:
        problems.append(f"max_steps must be >= 1, got {max_steps}")
    if max_seconds is not None and not max_seconds > 0:
        problems.append(f"max_seconds must be > 0, got {max_seconds}")
    return problems


def read_triples_tsv(path: str | os.PathLike) -> KnowledgeGraph:
    """Reads a UUKG-style triple file into a :class:`KnowledgeGraph`.

    Args:
        path: a text file (``.gz`` is read through gzip) with one ``head<TAB>relation<TAB>tail``
            line per triple; an optional first line ``head relation tail`` is skipped, as are
            blank lines.

    Returns:
        The graph; entity and relation ids follow the order of first appearance, duplicates dropped.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"triple file {path} does not exist")
    opener = gzip.open if path.endswith(".gz") else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 3 or not all(part.strip() for part in parts):
                raise ValueError(f"{path}:{line_number}: expected 'head<TAB>relation<TAB>tail', got {line!r}")
            if line_number == 1 and tuple(p.strip().lower() for p in parts) == TRIPLE_HEADER:
                continue
            rows.append(tuple(part.strip() for part in parts))
    if not rows:
        raise ValueError(f"triple file {path} contains no triples")
    return KnowledgeGraph.from_triples(rows)


def with_reciprocals(triples: np.ndarray, num_relations: int) -> np.ndarray:
    """Appends each triple's reverse ``(t, r + num_relations, h)``.

    Args:
        triples: ``(M, 3)`` int64 ``(head, relation, tail)`` ids.
        num_relations: number of forward relations ``R``.

    Returns:
        ``(2M, 3)`` int64: the input rows, then their reverses with relation ids in ``[R, 2R)``.
    """
    triples = np.asarray(triples, dtype=np.int64).reshape(-1, 3)
    reverse = np.stack([triples[:, 2], triples[:, 1] + num_relations, triples[:, 0]], axis=1)
    return np.concatenate([triples, reverse])


class KnownTails:
    """Sorted index of the known tails of every ``(head, relation)`` pair (a CSR matrix).

    Args:
        triples: ``(M, 3)`` int64 ``(head, relation, tail)``; relation ids in ``[0, num_relation_ids)``.
        num_entities: number of entities ``E``.
        num_relation_ids: number of relation ids (``2 * num_relations`` with reciprocals).
    """

    def __init__(self, triples: np.ndarray, num_entities: int, num_relation_ids: int) -> None:
        triples = np.asarray(triples, dtype=np.int64).reshape(-1, 3)
        self.num_entities = num_entities
        self.num_relation_ids = num_relation_ids
        keys = triples[:, 0] * num_relation_ids + triples[:, 1]
        order = np.lexsort((triples[:, 2], keys))
        keys = keys[order]
        self.tails = triples[order, 2]
        self.pair_keys, starts = np.unique(keys, return_index=True)
        self.offsets = np.append(starts, len(keys)).astype(np.int64)

    @property
    def num_pairs(self) -> int:
        return len(self.pair_keys)

    def pairs(self, pair_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(heads, relations)``, each ``(B,)`` int64, of the given pair ids (positions in the index)."""
        keys = self.pair_keys[pair_ids]
        return keys // self.num_relation_ids, keys % self.num_relation_ids

    def find(self, heads: np.ndarray, relations: np.ndarray) -> np.ndarray:
        """Pair ids ``(B,)`` of ``(head, relation)`` pairs; every pair must be in the index."""
        keys = np.asarray(heads) * self.num_relation_ids + np.asarray(relations)
        pair_ids = np.minimum(np.searchsorted(self.pair_keys, keys), self.num_pairs - 1)
        if np.any(self.pair_keys[pair_ids] != keys):
            raise KeyError("KnownTails.find: a (head, relation) pair is not in the index")
        return pair_ids

    def counts(self, pair_ids: np.ndarray) -> np.ndarray:
        """Number of known tails ``(B,)`` of each pair."""
        return self.offsets[pair_ids + 1] - self.offsets[pair_ids]

    def entries(self, pair_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates ``(rows, tails)`` of the ones in the ``(B, E)`` label matrix of ``pair_ids``."""
        counts = self.counts(pair_ids)
        rows = np.repeat(np.arange(len(pair_ids)), counts)
        first = np.repeat(self.offsets[pair_ids] - np.cumsum(counts) + counts, counts)
        return rows, self.tails[first + np.arange(counts.sum())]


def one_to_n_loss(
    logits: torch.Tensor, rows: torch.Tensor, tails: torch.Tensor, label_smoothing: float = 0.1
) -> torch.Tensor:
    """TuckER's 1-N binary cross-entropy with label smoothing, without a dense label matrix.

    With targets ``y = (1 - eps) * 1[t is a known tail] + 1 / E`` (TuckER's smoothing), the mean
    ``BCE(sigmoid(x), y)`` over the ``B x E`` logits equals
    ``(sum softplus(x) - (1 / E) sum x - (1 - eps) sum_{known (i, t)} x_it) / (B E)``,
    so only the coordinates of the ones are needed.

    Args:
        logits: ``(B, E)`` scores of every entity as the tail of ``B`` ``(head, relation)`` pairs.
        rows, tails: ``(P,)`` int64 coordinates of the known tails (see :meth:`KnownTails.entries`).
        label_smoothing: ``eps`` in ``[0, 1)``.

    Returns:
        The scalar mean loss.
    """
    num_entities = logits.shape[1]
    positive = logits[rows, tails].sum()
    total = F.softplus(logits).sum() - logits.sum() / num_entities - (1.0 - label_smoothing) * positive
    return total / logits.numel()


class TuckER(nn.Module):
    """TuckER scorer ``W x1 e_h x2 e_r x3 e_t`` with the paper's batch norm and dropouts.

    Args:
        num_entities: number of entities ``E``.
        num_relation_ids: number of relation rows (``2 * num_relations`` with reciprocals).
        embedding_dim: ``d``, shared by entities and relations (the core is ``(d, d, d)``).
        input_dropout: dropout on the batch-normed head embedding.
        hidden_dropout1: dropout on the relation-specific ``(d, d)`` core slice.
        hidden_dropout2: dropout on the batch-normed product before scoring.
    """

    def __init__(
        self,
        num_entities: int,
        num_relation_ids: int,
        embedding_dim: int = 128,
        input_dropout: float = 0.2,
        hidden_dropout1: float = 0.2,
        hidden_dropout2: float = 0.3,
    ) -> None:
        super().__init__()
        self.entity = nn.Embedding(num_entities, embedding_dim)
        self.relation = nn.Embedding(num_relation_ids, embedding_dim)
        self.core = nn.Parameter(torch.empty(embedding_dim, embedding_dim, embedding_dim).uniform_(-1.0, 1.0))
        nn.init.xavier_normal_(self.entity.weight)
        nn.init.xavier_normal_(self.relation.weight)
        self.input_dropout = nn.Dropout(input_dropout)
        self.hidden_dropout1 = nn.Dropout(hidden_dropout1)
        self.hidden_dropout2 = nn.Dropout(hidden_dropout2)
        self.bn0 = nn.BatchNorm1d(embedding_dim)
        self.bn1 = nn.BatchNorm1d(embedding_dim)

    def forward(self, heads: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, E)`` of ``(heads[i], relations[i], t)`` for every entity ``t``.

        Args:
            heads: ``(B,)`` int64 entity ids.
            relations: ``(B,)`` int64 relation ids (reciprocal ids included).
        """
        d = self.core.shape[0]
        x = self.input_dropout(self.bn0(self.entity(heads)))
        core = (self.relation(relations) @ self.core.view(d, d * d)).view(-1, d, d)
        x = torch.bmm(x.unsqueeze(1), self.hidden_dropout1(core)).squeeze(1)
        x = self.hidden_dropout2(self.bn1(x))
        return x @ self.entity.weight.T


def split_held_out(triples: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Holds out a random ``fraction`` of triples whose entities and relation stay in training.

    A triple is held out only if its head, tail and relation each keep at least one other
    training triple, so every held-out triple is predictable from learned embeddings.

    Args:
        triples: ``(M, 3)`` int64 triples.
        fraction: wanted share in ``[0, 1)``; fewer are held out when the graph is too sparse.
        seed: seed of the shuffle.

    Returns:
        ``(train, held_out)``: ``(M - K, 3)`` and ``(K, 3)`` int64 arrays, ``K <= round(fraction * M)``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1), got {fraction}")
    triples = np.asarray(triples, dtype=np.int64).reshape(-1, 3)
    wanted = int(round(fraction * len(triples)))
    degree = np.bincount(triples[:, [0, 2]].ravel(), minlength=int(triples.max(initial=-1)) + 1)
    relation_count = np.bincount(triples[:, 1])
    held = np.zeros(len(triples), dtype=bool)
    count = 0
    for i in np.random.default_rng(seed).permutation(len(triples)):
        if count >= wanted:
            break
        h, r, t = triples[i]
        needed = 2 if h == t else 1
        if degree[h] > needed and degree[t] > needed and relation_count[r] > 1:
            degree[h] -= 1
            degree[t] -= 1
            relation_count[r] -= 1
            held[i] = True
            count += 1
    return triples[~held], triples[held]


@torch.no_grad()
def evaluate_link_prediction(
    model: TuckER,
    triples: np.ndarray,
    known: KnownTails,
    num_relations: int,
    batch_size: int = 256,
) -> dict:
    """Filtered MRR and Hits@1/3/10 over tail prediction ``(h, r, ?)`` and head prediction ``(t, r_inv, ?)``.

    The true answer's rank is taken among all entities after removing every other known true
    answer in ``known``; ties count half (the mean of the optimistic and pessimistic ranks).

    Args:
        model: the scorer (set to eval mode here and restored afterwards).
        triples: ``(K, 3)`` int64 test triples with forward relation ids.
        known: index of all true triples (train and held out, with reciprocals) for filtering.
        num_relations: number of forward relations ``R``.
        batch_size: queries scored at once; memory is ``O(batch_size * E)``.

    Returns:
        ``mrr``, ``hits@1``, ``hits@3``, ``hits@10``, ``random_mrr`` (the expected MRR of a
        uniformly random ranking of the same filtered candidates) and ``num_queries`` (``2K``).
    """
    queries = with_reciprocals(triples, num_relations)
    if not len(queries):
        raise ValueError("evaluate_link_prediction: no triples to evaluate")
    was_training = model.training
    model.eval()
    device = model.entity.weight.device
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, known.num_entities + 1))])
    ranks, random_rr = [], []
    for start in range(0, len(queries), batch_size):
        batch = queries[start : start + batch_size]
        pair_ids = known.find(batch[:, 0], batch[:, 1])
        heads, relations, answers = (torch.from_numpy(batch[:, i]).to(device) for i in range(3))
        scores = model(heads, relations)
        rows = torch.arange(len(batch), device=device)
        target = scores[rows, answers].clone()
        known_rows, known_tails = known.entries(pair_ids)
        scores[torch.from_numpy(known_rows).to(device), torch.from_numpy(known_tails).to(device)] = -torch.inf
        scores[rows, answers] = target
        greater = (scores > target[:, None]).sum(1)
        ties = (scores == target[:, None]).sum(1) - 1
        ranks.append((1.0 + greater + 0.5 * ties).double().cpu().numpy())
        candidates = known.num_entities - known.counts(pair_ids) + 1
        random_rr.append(harmonic[candidates] / candidates)
    model.train(was_training)
    rank = np.concatenate(ranks)
    metrics = {"mrr": float(np.mean(1.0 / rank))}
    metrics.update({f"hits@{k}": float(np.mean(rank <= k)) for k in (1, 3, 10)})
    metrics["random_mrr"] = float(np.mean(np.concatenate(random_rr)))
    metrics["num_queries"] = len(rank)
    return metrics


@dataclass
class TuckerResult:
    """Pretrained embeddings and their evaluation.

    Attributes:
        entity_embeddings: ``(num_entities, d)`` float32, row ``i`` = entity id ``i``.
        relation_embeddings: ``(2 * num_relations, d)`` float32, forward relations then inverse ones.
        metrics: filtered ``mrr``, ``hits@1``, ``hits@3``, ``hits@10`` and ``random_mrr`` on the
            held-out test triples (``None`` without held-out triples), ``valid_mrr`` of the kept
            epoch, ``num_train``/``num_valid``/``num_test`` triples, ``seconds``, ``epochs`` and
            optimiser ``steps`` run, ``best_epoch``, ``stopped_by`` and the settings used.
    """

    entity_embeddings: np.ndarray
    relation_embeddings: np.ndarray
    metrics: dict = field(default_factory=dict)


def pretrain_tucker(
    kg: KnowledgeGraph,
    embedding_dim: int = 128,
    epochs: int = DEFAULT_TUCKER_EPOCHS,
    batch_size: int = 128,
    learning_rate: float = 0.01,
    label_smoothing: float = 0.1,
    held_out_fraction: float = 0.05,
    seed: int = 0,
    device: torch.device | str = "cpu",
    show_progress: bool = True,
    max_seconds: float | None = None,
    max_steps: int | None = None,
    input_dropout: float = 0.2,
    hidden_dropout1: float = 0.2,
    hidden_dropout2: float = 0.3,
    learning_rate_decay: float = 0.995,
    patience: int = 5,
    eval_batch_size: int = 256,
) -> TuckerResult:
    """Trains TuckER on ``kg`` with 1-N scoring and returns its embeddings and held-out metrics.

    The held-out triples (see :func:`split_held_out`) are split in half: a validation half,
    scored after every epoch for early stopping (the best epoch's weights are kept), and a
    test half, scored once at the end for the reported metrics.

    Args:
        kg: the knowledge graph.
        embedding_dim: ``d`` of entities and relations.
        epochs: maximum passes over the unique training ``(head, relation)`` pairs.
        batch_size: ``(head, relation)`` pairs per step; memory is ``O(batch_size * num_entities)``.
        learning_rate: Adam step size, multiplied by ``learning_rate_decay`` after each epoch.
        label_smoothing: ``eps`` in the targets ``(1 - eps) * y + 1 / num_entities``.
        held_out_fraction: share of triples held out for validation and test (0 trains on all).
        seed: seed of the split, initialisation, shuffling and dropout.
        device: torch device.
        show_progress: show a tqdm bar over training steps.
        max_seconds: wall-clock budget for training (checked after each step); ``None`` = no limit. The
            result then depends on the machine's speed and load.
        max_steps: optimiser-step budget, counted over epochs; ``None`` = no limit. Unlike ``max_seconds``
            it gives the same embeddings on any machine. The epoch it ends in is still validated.
        input_dropout, hidden_dropout1, hidden_dropout2: TuckER's three dropout rates.
        learning_rate_decay: per-epoch exponential decay of the learning rate.
        patience: stop after this many epochs without a better validation MRR.
        eval_batch_size: queries scored at once during evaluation.
    """
    if embedding_dim < 1 or epochs < 1 or batch_size < 2:
        raise ValueError(
            f"pretrain_tucker: need embedding_dim >= 1, epochs >= 1 and batch_size >= 2, got "
            f"{embedding_dim}, {epochs}, {batch_size}"
        )
    problems = tucker_budget_problems(epochs, max_steps, max_seconds)
    if problems:
        raise ValueError(f"pretrain_tucker: {'; '.join(problems)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"pretrain_tucker: label_smoothing must be in [0, 1), got {label_smoothing}")
    if len(kg.triples) < 2:
        raise ValueError(
            f"pretrain_tucker: the knowledge graph has {len(kg.triples)} triples; need at least 2"
        )
    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    num_relations, num_entities = kg.num_relations, kg.num_entities
    train, held_out = split_held_out(kg.triples, held_out_fraction, seed)
    valid, test = held_out[: len(held_out) // 2], held_out[len(held_out) // 2 :]
    known = KnownTails(with_reciprocals(kg.triples, num_relations), num_entities, 2 * num_relations)
    train_tails = KnownTails(with_reciprocals(train, num_relations), num_entities, 2 * num_relations)
    model = TuckER(
        num_entities, 2 * num_relations, embedding_dim, input_dropout, hidden_dropout1, hidden_dropout2
    )
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, learning_rate_decay)
    num_batches = math.ceil(train_tails.num_pairs / batch_size)
    best_state, best_mrr, best_epoch, stale, stopped_by = None, -1.0, 0, 0, "epochs"
    progress = tqdm(total=epochs * num_batches, desc="TuckER", unit="step", disable=not show_progress)
    epoch = total_steps = 0
    while epoch < epochs and stopped_by == "epochs":
        epoch += 1
        model.train()
        total_loss = 0.0
        num_steps = 0
        for pair_ids in np.array_split(rng.permutation(train_tails.num_pairs), num_batches):
            heads, relations = (torch.from_numpy(a).to(device) for a in train_tails.pairs(pair_ids))
            rows, tails = (torch.from_numpy(a).to(device) for a in train_tails.entries(pair_ids))
            loss = one_to_n_loss(model(heads, relations), rows, tails, label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            num_steps += 1
            total_steps += 1
            progress.update()
            if max_steps is not None and total_steps >= max_steps:
                stopped_by = "max_steps"
                break
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                stopped_by = "max_seconds"
                break
        scheduler.step()
        postfix = {"epoch": epoch, "loss": f"{total_loss / num_steps:.3g}"}
        if len(valid):
            valid_mrr = evaluate_link_prediction(model, valid, known, num_relations, eval_batch_size)["mrr"]
            postfix["valid_mrr"] = f"{valid_mrr:.4f}"
            if valid_mrr > best_mrr:
                best_mrr, best_epoch, stale = valid_mrr, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= patience and stopped_by == "epochs":
                    stopped_by = "early_stopping"
        progress.set_postfix(postfix)
        logger.info("TuckER %s", postfix)
    progress.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = epoch
    metrics = {"mrr": None, "hits@1": None, "hits@3": None, "hits@10": None, "random_mrr": None}
    if len(test):
        metrics.update(evaluate_link_prediction(model, test, known, num_relations, eval_batch_size))
    metrics.update(
        valid_mrr=best_mrr if len(valid) else None,
        num_entities=num_entities,
        num_relations=num_relations,
        num_train=len(train),
        num_valid=len(valid),
        num_test=len(test),
        epochs=epoch,
        steps=total_steps,
        best_epoch=best_epoch,
        stopped_by=stopped_by,
        seconds=time.perf_counter() - started,
        embedding_dim=embedding_dim,
        batch_size=batch_size,
        learning_rate=learning_rate,
        label_smoothing=label_smoothing,
        seed=seed,
    )
    return TuckerResult(
        entity_embeddings=model.entity.weight.detach().cpu().numpy().astype(np.float32),
        relation_embeddings=model.relation.weight.detach().cpu().numpy().astype(np.float32),
        metrics=metrics,
    )


def save_kg_embeddings(
    path: str | os.PathLike,
    entity_embeddings: np.ndarray,
    relation_embeddings: np.ndarray,
    metadata: dict | None = None,
) -> None:
    """Writes embeddings as safetensors (keys ``entity_embeddings``, ``relation_embeddings``).

    Args:
        path: output file.
        entity_embeddings: ``(num_entities, d)``.
        relation_embeddings: ``(2 * num_relations, d)``, forward relations then inverse ones.
        metadata: extra header entries; non-string values are stored as JSON.
    """
    entity_embeddings = np.ascontiguousarray(entity_embeddings, dtype=np.float32)
    relation_embeddings = np.ascontiguousarray(relation_embeddings, dtype=np.float32)
    _check_embeddings(entity_embeddings, relation_embeddings, os.fspath(path))
    header = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    save_file(dict(zip(EMBEDDING_KEYS, (entity_embeddings, relation_embeddings))), os.fspath(path), header)


def load_kg_embeddings(
    path: str | os.PathLike, kg: KnowledgeGraph | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reads embeddings written by :func:`save_kg_embeddings`.

    Args:
        path: the safetensors file.
        kg: when given, the row counts are checked against its entities and ``2 * num_relations``.

    Returns:
        ``(entity_embeddings (num_entities, d), relation_embeddings (2 * num_relations, d))`` float32.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"KG embedding file {path} does not exist; run scripts/pretrain_kg.py")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"KG embedding file {path} is not a readable safetensors file ({err})") from None
    missing = [key for key in EMBEDDING_KEYS if key not in tensors]
    if missing:
        raise KeyError(f"KG embedding file {path} lacks {missing}; it has {sorted(tensors)}")
    entity_embeddings, relation_embeddings = (
        tensors[key].astype(np.float32, copy=False) for key in EMBEDDING_KEYS
    )
    _check_embeddings(entity_embeddings, relation_embeddings, path)
    if kg is not None and (
        len(entity_embeddings) != kg.num_entities or len(relation_embeddings) != 2 * kg.num_relations
    ):
        raise ValueError(
            f"KG embedding file {path} has {len(entity_embeddings)} entity and {len(relation_embeddings)} "
            f"relation rows, but the graph has {kg.num_entities} entities and {2 * kg.num_relations} "
            "relation ids (with inverses); pretrain the embeddings on this graph again"
        )
    return entity_embeddings, relation_embeddings


def _check_embeddings(entity_embeddings: np.ndarray, relation_embeddings: np.ndarray, path: str) -> None:
    if entity_embeddings.ndim != 2 or relation_embeddings.ndim != 2:
        raise ValueError(
            f"{path}: embeddings must be 2-D, got {entity_embeddings.shape}, {relation_embeddings.shape}"
        )
    if entity_embeddings.shape[1] != relation_embeddings.shape[1]:
        raise ValueError(
            f"{path}: entity and relation embedding dims must be equal, got {entity_embeddings.shape[1]} "
            f"and {relation_embeddings.shape[1]}"
        )
    if len(relation_embeddings) % 2:
        raise ValueError(
            f"{path}: relation_embeddings needs 2 * num_relations rows (forward then inverse), "
            f"got {len(relation_embeddings)}"
        )
