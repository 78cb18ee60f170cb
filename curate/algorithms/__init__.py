"""Pure algorithms, arrays in and arrays out: LSH, k-means, union-find, prototypes, loss clusters, pools."""
