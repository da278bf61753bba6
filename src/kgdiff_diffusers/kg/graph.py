"""An urban knowledge graph as (head, relation, tail) triples with UUKG-style id maps."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..data.series import FORBIDDEN_ID_CHARACTERS

TRIPLES_FILE = "triples.tsv"
ENTITY_MAP_FILE = "entity2id.txt"
RELATION_MAP_FILE = "relation2id.txt"
INVERSE_SUFFIX = "_inv"


@dataclass
class KnowledgeGraph:
    """Triples over named entities and relations.

    Attributes:
        entities: entity names; an entity's id is its position (e.g. ``"Sensor/400001"``, ``"Area/4"``).
        relations: relation names; a relation's id is its position (e.g. ``"ANA"``, ``"PLA"``).
        triples: ``(M, 3)`` int64 array of ``(head_id, relation_id, tail_id)``.
    """

    entities: list[str]
    relations: list[str]
    triples: np.ndarray

    def __post_init__(self) -> None:
        self.triples = np.asarray(self.triples, dtype=np.int64).reshape(-1, 3)
        if len(set(self.entities)) != len(self.entities):
            raise ValueError("KnowledgeGraph: entity names must be unique")
        if len(set(self.relations)) != len(self.relations):
            raise ValueError("KnowledgeGraph: relation names must be unique")
        if len(self.triples):
            if self.triples[:, [0, 2]].min() < 0 or self.triples[:, [0, 2]].max() >= len(self.entities):
                raise ValueError("KnowledgeGraph: a triple refers to an entity id out of range")
            if self.triples[:, 1].min() < 0 or self.triples[:, 1].max() >= len(self.relations):
                raise ValueError("KnowledgeGraph: a triple refers to a relation id out of range")
        self._entity_ids = {name: i for i, name in enumerate(self.entities)}
        self._relation_ids = {name: i for i, name in enumerate(self.relations)}

    @classmethod
    def from_triples(cls, named_triples: Iterable[tuple[str, str, str]]) -> KnowledgeGraph:
        """Builds a graph from ``(head, relation, tail)`` name triples; duplicates are dropped."""
        entities: dict[str, int] = {}
        relations: dict[str, int] = {}
        rows = []
        for head, relation, tail in named_triples:
            h = entities.setdefault(str(head), len(entities))
            r = relations.setdefault(str(relation), len(relations))
            t = entities.setdefault(str(tail), len(entities))
            rows.append((h, r, t))
        triples = np.unique(np.asarray(rows, dtype=np.int64).reshape(-1, 3), axis=0)
        return cls(list(entities), list(relations), triples)

    @property
    def num_entities(self) -> int:
        return len(self.entities)

    @property
    def num_relations(self) -> int:
        return len(self.relations)

    def entity_id(self, name: str) -> int:
        try:
            return self._entity_ids[name]
        except KeyError:
            raise KeyError(f"entity {name!r} is not in the knowledge graph") from None

    def relation_id(self, name: str) -> int:
        try:
            return self._relation_ids[name]
        except KeyError:
            raise KeyError(f"relation {name!r} is not in the knowledge graph") from None

    def has_entity(self, name: str) -> bool:
        return name in self._entity_ids

    def named_triples(self) -> list[tuple[str, str, str]]:
        return [(self.entities[h], self.relations[r], self.entities[t]) for h, r, t in self.triples]

    def add_triples(self, named_triples: Iterable[tuple[str, str, str]]) -> KnowledgeGraph:
        """Returns a new graph with extra triples; existing entity and relation ids are unchanged."""
        entities = list(self.entities)
        relations = list(self.relations)
        entity_ids = dict(self._entity_ids)
        relation_ids = dict(self._relation_ids)
        rows = []
        for head, relation, tail in named_triples:
            for name in (head, tail):
                if name not in entity_ids:
                    entity_ids[name] = len(entities)
                    entities.append(name)
            if relation not in relation_ids:
                relation_ids[relation] = len(relations)
                relations.append(relation)
            rows.append((entity_ids[head], relation_ids[relation], entity_ids[tail]))
        extra = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        return KnowledgeGraph(entities, relations, np.unique(np.concatenate([self.triples, extra]), axis=0))

    def neighbor_index(self, node_entities: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The neighbourhood N_gamma = {(r, t)} of each given entity, as flat index arrays.

        Edges are read in both directions: an incoming triple ``(t, r, gamma)`` becomes the
        neighbour ``(r_inv, t)`` with inverse relation id ``r + num_relations`` (TuckER trains
        with these reciprocal relations), so a node also sees e.g. the POIs located in it.

        Returns:
            ``(node_index, relation_id, neighbor_id)``, each ``(E,)`` int64: edge ``k`` links row
            ``node_index[k]`` of ``node_entities`` to entity ``neighbor_id[k]`` by relation
            ``relation_id[k]`` in ``[0, 2 * num_relations)``.
        """
        rows = np.array([self.entity_id(name) for name in node_entities], dtype=np.int64)
        row_of_entity = np.full(self.num_entities, -1, dtype=np.int64)
        row_of_entity[rows] = np.arange(len(rows))
        heads, rels, tails = self.triples.T
        out_edges = row_of_entity[heads] >= 0
        in_edges = row_of_entity[tails] >= 0
        node_index = np.concatenate([row_of_entity[heads[out_edges]], row_of_entity[tails[in_edges]]])
        relation_id = np.concatenate([rels[out_edges], rels[in_edges] + self.num_relations])
        neighbor_id = np.concatenate([tails[out_edges], heads[in_edges]])
        order = np.argsort(node_index, kind="stable")
        return node_index[order], relation_id[order], neighbor_id[order]

    def relation_names_with_inverse(self) -> list[str]:
        """Relation names for ids ``[0, 2 * num_relations)``, as used by :meth:`neighbor_index`."""
        return self.relations + [name + INVERSE_SUFFIX for name in self.relations]

    def save(self, folder: str | os.PathLike) -> None:
        """Writes ``triples.tsv`` (head, relation, tail names) and UUKG-style ``name<TAB>id`` maps."""
        for kind, names in (("entity", self.entities), ("relation", self.relations)):
            unreadable = next((name for name in names if any(c in name for c in FORBIDDEN_ID_CHARACTERS)), None)
            if unreadable is not None:
                raise ValueError(
                    f"cannot save the knowledge graph: {kind} {unreadable!r} contains a tab or line break, "
                    "which the tab-separated KG files cannot hold; rename it"
                )
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, TRIPLES_FILE), "w", encoding="utf-8") as f:
            for h, r, t in self.triples:
                f.write(f"{self.entities[h]}\t{self.relations[r]}\t{self.entities[t]}\n")
        for file_name, names in ((ENTITY_MAP_FILE, self.entities), (RELATION_MAP_FILE, self.relations)):
            with open(os.path.join(folder, file_name), "w", encoding="utf-8") as f:
                f.writelines(f"{name}\t{i}\n" for i, name in enumerate(names))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> KnowledgeGraph:
        """Reads a folder written by :meth:`save`; ids follow the saved maps."""
        paths = {name: os.path.join(folder, name) for name in (TRIPLES_FILE, ENTITY_MAP_FILE, RELATION_MAP_FILE)}
        for path in paths.values():
            if not os.path.isfile(path):
                raise FileNotFoundError(f"knowledge graph file {path} is missing")
        entities = _read_id_map(paths[ENTITY_MAP_FILE])
        relations = _read_id_map(paths[RELATION_MAP_FILE])
        entity_ids = {name: i for i, name in enumerate(entities)}
        relation_ids = {name: i for i, name in enumerate(relations)}
        rows = []
        with open(paths[TRIPLES_FILE], encoding="utf-8") as f:
            for line_number, line in enumerate(f, 1):
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 3:
                    raise ValueError(f"{paths[TRIPLES_FILE]}:{line_number}: expected 3 tab-separated fields")
                head, relation, tail = parts
                try:
                    rows.append((entity_ids[head], relation_ids[relation], entity_ids[tail]))
                except KeyError as err:
                    raise ValueError(
                        f"{paths[TRIPLES_FILE]}:{line_number}: {err.args[0]!r} is not in the id maps"
                    ) from None
        return cls(entities, relations, np.asarray(rows, dtype=np.int64).reshape(-1, 3))


def _read_id_map(path: str) -> list[str]:
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            name, _, index = line.rstrip("\n").rpartition("\t")
            if not name or not index.isdigit():
                raise ValueError(f"{path}:{line_number}: expected 'name<TAB>id'")
            pairs.append((int(index), name))
    pairs.sort()
    if [i for i, _ in pairs] != list(range(len(pairs))):
        raise ValueError(f"{path}: ids must be 0..n-1 without gaps")
    return [name for _, name in pairs]
