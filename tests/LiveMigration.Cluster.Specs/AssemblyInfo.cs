// Each spec runs a whole cluster; on two cores, clusters in parallel would only slow each other's failure detection.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
