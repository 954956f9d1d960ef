"""The algorithms the clusterers and the engine share, free of run concerns: k-means, Sinkhorn-Knopp,
kNN graphs, cluster merging, memory banks, PCA-whitening, metrics, and the SwAV / DeepCluster-v2 projection."""
