// The Coordinator (migration saga, inventory, API) comes with the cluster work (issue 3).
Console.Error.WriteLine("Coordinator: not built yet; run the demo (see README) to drive the host layer.");
return 2;
