// The HostNode process joins the cluster with the cluster work (issue 3). Until then the host
// layer (storage domains, QEMU block jobs, guest workload) is a library, driven by the demo and tests.
Console.Error.WriteLine("HostNode: the cluster node is not built yet; run the demo (see README) to drive the host layer.");
return 2;
