// `lsm`, the operator's CLI, talks to the Coordinator's API (issue 4). Until that API exists it only says so.
Console.Error.WriteLine("lsm: the Coordinator API is not built yet (see README for the demo).");
return 2;
