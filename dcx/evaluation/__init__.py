"""Evaluation of learned features on a labelled task, always beside the random-init baseline.

Three protocols on each frozen block: ``linear`` (a linear classifier on standardised,
average-pooled block outputs -> test top-1), ``knn`` (weighted kNN, votes exp(sim / T), on
L2-normalised features), ``cluster`` (k-means with k = #classes -> NMI, ARI, Hungarian accuracy,
after "l2" and after the paper's "pca256-whiten-l2": whitening can reverse a learned-vs-random
comparison on conv features, docs/algorithms "lessons").

Modules: ``data`` (what to evaluate on, and the split), ``extraction`` (pooled block features;
which layer and how it is pooled: ``dcx.training.layers``), ``protocols`` (pure functions), ``runs``
(a network or a run directory -> eval.json), ``tables``.
"""

from dcx.evaluation.data import (
    CLUSTER_IMAGES, LABELLED, SPLIT_SEED, TEST_FRACTION, EvalData, load_eval_data, stratified_sample, stratified_split,
)
from dcx.evaluation.extraction import MEMORY_BUDGET, extract_layers, layer_groups
from dcx.evaluation.protocols import (
    CLUSTER_PREPROCESSING, CLUSTER_RUNS, KNN_K, KNN_T, LINEAR_ITERS, LINEAR_WD, PROTOCOLS, cluster_protocol,
    knn_classify, linear_probe, pca_whiten_l2, preprocess_for_clustering,
)
from dcx.evaluation.runs import (
    EVAL_JSON, LoadedRun, best_layer, check_protocols, evaluate_features, evaluate_network, evaluate_random,
    evaluate_run, headline, load_network, load_run, merge_previous, read_config, settings, TrainedNetwork,
)
from dcx.evaluation.tables import EvalTable, eval_tables, fmt
from dcx.training.layers import FEATURES, MAX_DIMS, layer_names, layer_shapes, pooled_side, pooling_plan

__all__ = [
    "CLUSTER_IMAGES", "CLUSTER_PREPROCESSING", "CLUSTER_RUNS", "EVAL_JSON", "FEATURES", "KNN_K", "KNN_T", "LABELLED", "LINEAR_ITERS",
    "LINEAR_WD", "MAX_DIMS", "MEMORY_BUDGET", "PROTOCOLS", "SPLIT_SEED", "TEST_FRACTION", "EvalData", "EvalTable",
    "LoadedRun", "TrainedNetwork", "best_layer", "check_protocols", "cluster_protocol", "eval_tables", "evaluate_features",
    "evaluate_network", "evaluate_random", "evaluate_run", "extract_layers", "fmt", "headline", "knn_classify",
    "layer_groups", "layer_names", "layer_shapes", "linear_probe", "load_eval_data", "load_network", "load_run", "merge_previous",
    "pca_whiten_l2", "pooled_side", "pooling_plan", "preprocess_for_clustering", "read_config", "settings", "stratified_sample",
    "stratified_split",
]
