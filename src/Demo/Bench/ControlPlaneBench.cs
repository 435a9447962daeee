using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using LiveMigration.Cli.Api;
using LiveMigration.Cli.Local;
using LiveMigration.Demo.Cluster;
using LiveMigration.Shared.Hosting;

namespace LiveMigration.Demo.Bench;

/// <summary>
/// <c>./run.sh bench control-plane</c> (issue "The control plane at data-center scale"): a local cluster of real processes
/// (the Coordinator with the SQLite journal, sim hosts: <c>lsm local up --hypervisor sim</c>, copies of zero duration)
/// runs pre-copy migrations of one disk with a 3-volume chain, through the HTTP API as any client would:
/// <list type="number">
/// <item>overhead: one migration at a time (no queueing), request to completed by the Coordinator's own clock;</item>
/// <item>throughput: a fixed number of migrations kept in flight for a while, completions counted from the event stream,
/// while a sampler times the API's answers (show one, list the active ones) and reads the Coordinator's memory.</item>
/// </list>
/// Then <see cref="InFlightBench"/>'s scenarios (many migrations in flight, recovery after a SIGKILL) and the throughput on
/// PostgreSQL with 1 and 3 Coordinators. Writes var/bench/control-plane.json.
/// </summary>
internal static class ControlPlaneBench
{
    private const long GiB = 1L << 30;

    public static async Task<int> RunAsync(string[] args)
    {
        var seconds = 60;
        // Enough to keep the machine busy: each saga waits on its journal writes in turn, and with 32 in flight the run
        // measured those round trips (1.5 of 2 cores busy at ~200/s), not what the Coordinator can complete.
        var inFlight = 128;
        var sequential = 50;
        var hosts = 2;
        var warmupSeconds = 15;
        var maxPerHost = 0;
        var maxPerDomain = 0;
        var postgresSeconds = 30;
        var hold = 10_000;
        var holdSeconds = 30;
        var recover = 1_000;
        var dataDir = "/tmp/lsm-bench-cp";
        for (var i = 0; i < args.Length; i++)
        {
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--seconds" when int.TryParse(Value(), out var n) && n is >= 5 and <= 3600: seconds = n; break;
                case "--in-flight" when int.TryParse(Value(), out var n) && n is >= 1 and <= 10_000: inFlight = n; break;
                case "--sequential" when int.TryParse(Value(), out var n) && n is >= 5 and <= 10_000: sequential = n; break;
                case "--hosts" when int.TryParse(Value(), out var n) && n is >= 1 and <= 16: hosts = n; break;
                case "--warmup" when int.TryParse(Value(), out var n) && n is >= 0 and <= 600: warmupSeconds = n; break;
                case "--max-per-host" when int.TryParse(Value(), out var n) && n is >= 0 and <= 1000: maxPerHost = n; break;
                case "--max-per-domain" when int.TryParse(Value(), out var n) && n is >= 0 and <= 1000: maxPerDomain = n; break;
                case "--postgres-seconds" when int.TryParse(Value(), out var n) && n is 0 or (>= 5 and <= 3600): postgresSeconds = n; break;
                case "--hold" when int.TryParse(Value(), out var n) && n is >= 0 and <= 20_000: hold = n; break;
                case "--hold-seconds" when int.TryParse(Value(), out var n) && n is >= 5 and <= 600: holdSeconds = n; break;
                case "--recover" when int.TryParse(Value(), out var n) && n is >= 0 and <= 10_000: recover = n; break;
                case "--data-dir": dataDir = Value(); break;
                default:
                    Console.Error.WriteLine($"bench control-plane: unknown or invalid option {args[i]}");
                    Console.Error.WriteLine("usage: ./run.sh bench control-plane [--seconds N (5-3600, default 60)] [--in-flight N (default 128)] " +
                                            "[--sequential N (5-10000, default 50)] [--hosts N (default 2)] [--warmup SECONDS (default 15)] " +
                                            "[--max-per-host N] [--max-per-domain N (the admission limits; default 0 = none)] " +
                                            "[--postgres-seconds N (1 and 3 Coordinators on PostgreSQL; default 30, 0 = skip)] " +
                                            "[--hold N (migrations held in flight, copies paced; default 10000, 0 = skip)] [--hold-seconds N (default 30)] " +
                                            "[--recover N (in flight when the Coordinator is SIGKILLed; default 1000, 0 = skip)] [--data-dir DIR]");
                    return 2;
            }
        }
        dataDir = Path.GetFullPath(dataDir);
        await DemoSetup.ClearPreviousRunAsync(dataDir);
        Console.WriteLine($"bench control-plane: a Coordinator (SQLite journal) and {hosts} sim hosts as processes; data under {dataDir} (removed afterwards)");

        var exit = 1;
        try
        {
            // The admission limits are the operator's policy, not the control plane's cost: the bench lifts them unless told
            // (and the SPM's bound on copies at once, which copies of zero duration never meet).
            var cluster = await LocalClusterLauncher.UpAsync(new LocalClusterOptions(dataDir)
            {
                Hosts = hosts, ApiPort = 0, Hypervisor = "sim", MaxPerHost = maxPerHost, MaxPerDomain = maxPerDomain, SpmMaxCopies = 0,
                ExtraHocon = Environment.GetEnvironmentVariable("LSM_BENCH_HOCON"),
            });
            var coordinatorPid = cluster.Nodes.Single(n => n.Name == "coordinator").Pid;
            var token = cluster.ApiTokenFile is { } tokenFile ? ApiTokenFile.Read(tokenFile) : null;
            using var api = new ApiClient(cluster.ApiUrl, token);
            var (a, b, disks) = await PrepareAsync(api, dataDir, inFlight, hosts);

            using var events = new MigrationEventReader(cluster.ApiUrl, token);
            await events.StartAsync();
            // A warm-up first, not counted: a process a minute old still JITs its hot paths again (tiered compilation),
            // which a Coordinator that runs for weeks does not pay.
            if (warmupSeconds > 0)
            {
                var warm = await ThroughputAsync([api], events, disks, a, b, inFlight, TimeSpan.FromSeconds(warmupSeconds), coordinatorPid, quiet: true);
                Console.WriteLine($"warm-up, {inFlight} in flight for {warmupSeconds} s (not counted): {warm.Completed} completed");
            }

            // 1. overhead, one at a time; its end comes from the event stream (no polling to load what is measured)
            var overheads = new List<double>();
            for (var n = 0; n < sequential; n++)
            {
                var disk = disks[0];
                var id = await api.StartMigrationAsync(disk.Vm, disk.Image, disk.OnA ? b : a, "pre-copy");
                var m = await FinishedOrExplainedAsync(api, events, id);
                Require(m, id);
                disk.OnA = !disk.OnA;
                overheads.Add((m.GetProperty("finishedAt").GetDateTimeOffset() - m.GetProperty("requestedAt").GetDateTimeOffset()).TotalMilliseconds);
            }
            overheads.Sort();
            Console.WriteLine($"overhead, one migration at a time ({sequential}): p50 {Percentile(overheads, 0.50):0.0} ms, p99 {Percentile(overheads, 0.99):0.0} ms " +
                              "(request to completed, the Coordinator's clock)");

            // 2. throughput with migrations in flight, API and memory sampled meanwhile (a few requests a second, as an
            // operator's dashboard and CLI would add)
            var run = await ThroughputAsync([api], events, disks, a, b, inFlight, TimeSpan.FromSeconds(seconds), coordinatorPid, quiet: false);
            var (completed, elapsed, settlingRefusals, rssPeak) = (run.Completed, run.Elapsed, run.SettlingRefusals, run.RssPeak);
            var (startLatencies, showLatencies, listLatencies) = (run.StartLatencies, run.ShowLatencies, run.ListLatencies);
            var perSecond = completed / elapsed.TotalSeconds;
            var apiP99 = new[] { Percentile(startLatencies, 0.99), Percentile(showLatencies, 0.99), Percentile(listLatencies, 0.99) }.Max();
            Console.WriteLine($"throughput, {inFlight} in flight for {elapsed.TotalSeconds:0} s: {completed} completed = {perSecond:0.0} migrations/s; " +
                              $"API p99 start {Percentile(startLatencies, 0.99):0} ms, show {Percentile(showLatencies, 0.99):0} ms, list {Percentile(listLatencies, 0.99):0} ms; " +
                              $"Coordinator RSS peak {rssPeak / (1 << 20)} MiB; {settlingRefusals} starts refused while the disk settled and asked again");

            await LocalClusterLauncher.DownAsync(dataDir);

            // 3. many migrations in flight at once (copies paced to last minutes), then 4. a Coordinator SIGKILLed amid them
            InFlightBench.InFlightResult? held = null;
            if (hold > 0)
            {
                Console.WriteLine($"in flight: {hold} migrations held (sim copies at 1 MiB/s of a 600 MiB base), the API sampled for {holdSeconds} s");
                held = await InFlightBench.InFlightAsync(hold, hosts, holdSeconds, $"{dataDir}-hold");
                Console.WriteLine($"in flight: {held.InFlight} migrations; API p99 start {Percentile(held.Start, 0.99):0} ms, show {Percentile(held.Show, 0.99):0} ms, " +
                                  $"list (a page of 100) {Percentile(held.List, 0.99):0} ms, dashboard refresh {Percentile(held.Dashboard, 0.99):0} ms; " +
                                  $"Coordinator RSS peak {held.RssPeakBytes / (1 << 20)} MiB; the refresh's requests p99: " +
                                  string.Join(", ", held.DashboardParts.Select(p => $"{p.Key} {Percentile(p.Value, 0.99):0} ms")));
            }
            InFlightBench.RecoveryResult? recovered = null;
            if (recover > 0)
            {
                Console.WriteLine($"recovery: {recover} migrations in flight, the Coordinator SIGKILLed and started again");
                recovered = await InFlightBench.RecoveryAsync(recover, hosts, $"{dataDir}-recover");
                Console.WriteLine($"recovery: API answering {recovered.StreamOpenSeconds:0.0} s after the restart, first migration moving at " +
                                  $"{recovered.FirstMovingSeconds:0.0} s, all {recovered.InFlight} at {recovered.AllMovingSeconds:0.0} s ({recovered.Moving} moving); " +
                                  $"CPU meanwhile: the restarted Coordinator {recovered.CoordinatorCpuSeconds:0.0} s, the sim hosts {recovered.HostsCpuSeconds:0.0} s " +
                                  $"({Environment.ProcessorCount} cores)");
            }

            // 5. the same throughput on a PostgreSQL journal, with one Coordinator and with three
            var postgres = new JsonObject();
            if (postgresSeconds > 0)
            {
                await using var server = await ThrowawayPostgres.StartAsync(durable: true);
                foreach (var coordinators in new[] { 1, 3 })
                {
                    var perSecondOnPostgres = await PostgresThroughputAsync(server, coordinators, hosts, inFlight, postgresSeconds, warmupSeconds,
                        maxPerHost, maxPerDomain, dataDir);
                    postgres[$"migrationsPerSecondPostgres{coordinators}"] = Math.Round(perSecondOnPostgres, 1);
                }
            }

            var report = new JsonObject
            {
                ["commit"] = await CopyBench.CommitAsync(),
                ["machine"] = new JsonObject { ["cores"] = Environment.ProcessorCount, ["os"] = Environment.OSVersion.ToString() },
                ["journal"] = "sqlite",
                ["hosts"] = hosts,
                ["admissionLimits"] = new JsonObject { ["perHost"] = maxPerHost, ["perDomain"] = maxPerDomain, ["note"] = "0 = no limit" },
                // the SPM's bound on copies at once (lsm local up --spm-max-copies), lifted as the admission limits are
                ["spmMaxCopies"] = 0,
                ["warmupSeconds"] = warmupSeconds,
                ["migration"] = "pre-copy, one disk, 3-volume chain, sim copies of zero duration",
                ["migrationsPerSecond"] = Math.Round(perSecond, 1),
                ["throughputSeconds"] = Math.Round(elapsed.TotalSeconds, 1),
                ["throughputInFlight"] = inFlight,
                ["completed"] = completed,
                ["startsRefusedWhileDiskSettles"] = settlingRefusals,
                ["overheadP50Ms"] = Math.Round(Percentile(overheads, 0.50), 1),
                ["overheadP99Ms"] = Math.Round(Percentile(overheads, 0.99), 1),
                ["apiP99MsUnderLoad"] = Math.Round(apiP99, 1),
                ["apiP99Ms"] = new JsonObject
                {
                    ["start"] = Math.Round(Percentile(startLatencies, 0.99), 1),
                    ["show"] = Math.Round(Percentile(showLatencies, 0.99), 1),
                    ["listActive"] = Math.Round(Percentile(listLatencies, 0.99), 1),
                },
                ["coordinatorRssMiBThroughput"] = rssPeak / (1 << 20),
                // with many migrations in flight (the issue's memory and API targets apply there)
                ["inFlight"] = held?.InFlight,
                ["coordinatorRssMiB"] = held is null ? null : held.RssPeakBytes / (1 << 20),
                ["apiP99MsInFlight"] = held is null ? null : new JsonObject
                {
                    ["start"] = Math.Round(Percentile(held.Start, 0.99), 1),
                    ["show"] = Math.Round(Percentile(held.Show, 0.99), 1),
                    ["listPage"] = Math.Round(Percentile(held.List, 0.99), 1),
                    ["dashboardRefresh"] = Math.Round(Percentile(held.Dashboard, 0.99), 1),
                    ["dashboardRefreshParts"] = new JsonObject(held.DashboardParts.Select(p =>
                        KeyValuePair.Create(p.Key, (JsonNode?)Math.Round(Percentile(p.Value, 0.99), 1)))),
                },
                ["startsPerSecondInFlight"] = held is null ? null : Math.Round(held.StartsPerSecond, 1),
                ["recoveryInFlight"] = recovered?.InFlight,
                ["recoverySecondsFor1000"] = recovered is null || recovered.InFlight != 1000 ? null : Math.Round(recovered.AllMovingSeconds, 1),
                ["recovery"] = recovered is null ? null : new JsonObject
                {
                    ["inFlight"] = recovered.InFlight,
                    ["apiAnsweringSeconds"] = Math.Round(recovered.StreamOpenSeconds, 2),
                    ["firstMovingSeconds"] = Math.Round(recovered.FirstMovingSeconds, 2),
                    ["allMovingSeconds"] = Math.Round(recovered.AllMovingSeconds, 2),
                    ["moving"] = recovered.Moving,
                    ["coordinatorCpuSeconds"] = Math.Round(recovered.CoordinatorCpuSeconds, 2),
                    ["hostsCpuSeconds"] = Math.Round(recovered.HostsCpuSeconds, 2),
                },
                ["migrationsPerSecondPostgres1"] = postgres["migrationsPerSecondPostgres1"]?.DeepClone(),
                ["migrationsPerSecondPostgres3"] = postgres["migrationsPerSecondPostgres3"]?.DeepClone(),
                ["postgresSeconds"] = postgresSeconds,
            };
            var path = Path.GetFullPath(Path.Combine("var", "bench", "control-plane.json"));
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            await File.WriteAllTextAsync(path, report.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            Console.WriteLine($"written: {path}");
            exit = 0;
        }
        catch (Exception e) when (e is CliFailure or ApiException or TimeoutException or InvalidOperationException or HttpRequestException
                                       or Shared.Model.OperationFailedException)
        {
            Console.Error.WriteLine($"bench control-plane: {e.Message}");
            // What the cluster said, kept for whoever looks next: the data directory goes below.
            if (BenchProbes.KeepLogs(dataDir, "control-plane-logs") is { } logs)
                Console.Error.WriteLine($"the nodes' logs: {logs}");
        }
        finally
        {
            await LocalClusterLauncher.DownAsync(dataDir);
            try { Directory.Delete(dataDir, recursive: true); } catch (IOException) { }
        }
        return exit;
    }

    /// <summary>
    /// The throughput scenario on a PostgreSQL journal (a database of its own): <paramref name="coordinators"/> Coordinators,
    /// the workers spread over their APIs, the sagas over the Coordinators by cluster sharding.
    /// </summary>
    private static async Task<double> PostgresThroughputAsync(ThrowawayPostgres server, int coordinators, int hosts, int inFlight, int seconds,
        int warmupSeconds, int maxPerHost, int maxPerDomain, string dataDir)
    {
        var journal = await server.CreateDatabaseAsync($"lsm_bench_{coordinators}");
        var dir = $"{dataDir}-pg{coordinators}";
        await DemoSetup.ClearPreviousRunAsync(dir);
        try
        {
            var cluster = await LocalClusterLauncher.UpAsync(new LocalClusterOptions(dir)
            {
                Hosts = hosts, Coordinators = coordinators, Journal = journal, ApiPort = 0, Hypervisor = "sim",
                MaxPerHost = maxPerHost, MaxPerDomain = maxPerDomain, SpmMaxCopies = 0, ExtraHocon = Environment.GetEnvironmentVariable("LSM_BENCH_HOCON"),
            });
            var token = cluster.ApiTokenFile is { } tokenFile ? ApiTokenFile.Read(tokenFile) : null;
            var apis = cluster.Nodes.Where(n => n.Role == "coordinator")
                .Select(n => new ApiClient(n.Name == LocalCluster.FirstCoordinator ? cluster.ApiUrl : n.ApiUrl!, token)).ToList();
            try
            {
                var (a, b, disks) = await PrepareAsync(apis[0], dir, inFlight, hosts);
                using var events = new MigrationEventReader(cluster.ApiUrl, token);
                await events.StartAsync();
                var coordinatorPid = cluster.Nodes.First(n => n.Name == "coordinator").Pid;
                if (warmupSeconds > 0)
                    await ThroughputAsync(apis, events, disks, a, b, inFlight, TimeSpan.FromSeconds(warmupSeconds), coordinatorPid, quiet: true);
                var run = await ThroughputAsync(apis, events, disks, a, b, inFlight, TimeSpan.FromSeconds(seconds), coordinatorPid, quiet: true);
                var perSecond = run.Completed / run.Elapsed.TotalSeconds;
                Console.WriteLine($"PostgreSQL journal, {coordinators} Coordinator(s), {inFlight} in flight for {run.Elapsed.TotalSeconds:0} s: " +
                                  $"{run.Completed} completed = {perSecond:0.0} migrations/s; API p99 start {Percentile(run.StartLatencies, 0.99):0} ms");
                return perSecond;
            }
            finally
            {
                foreach (var api in apis) api.Dispose();
            }
        }
        finally
        {
            await LocalClusterLauncher.DownAsync(dir);
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>Two sim domains and one sim VM per worker (one 1 GiB disk with a 3-volume chain), all in the inventory.</summary>
    private static async Task<(string A, string B, List<SimDisk> Disks)> PrepareAsync(ApiClient api, string dataDir, int vmCountWanted, int hosts)
    {
        var domainRoot = LocalCluster.DomainRootOf(dataDir);
        var a = (await api.PostAsync("/api/domains", new { name = "a", path = domainRoot })).GetProperty("id").GetString()!;
        var b = (await api.PostAsync("/api/domains", new { name = "b", path = domainRoot })).GetProperty("id").GetString()!;

        // Each worker owns its VMs; a VM's disk goes A→B, then B→A, ...
        var vmCount = Math.Max(vmCountWanted, 1);
        var clock = Stopwatch.StartNew();
        var disks = new List<SimDisk>();
        for (var v = 0; v < vmCount; v++)
        {
            var vm = await api.PostAsync("/api/vms", new
            {
                name = $"bench-{v:D5}", host = $"host-{v % hosts + 1}",
                disks = new[] { new { sizeBytes = GiB, domain = "a", snapshots = 2 } },
            });
            disks.Add(new SimDisk(vm.GetProperty("id").GetString()!, vm.GetProperty("disks")[0].GetProperty("image").GetString()!) { OnA = true });
        }
        Console.WriteLine($"{vmCount} sim VMs (one 1 GiB disk, 3-volume chain each) on {hosts} hosts, made in {clock.Elapsed.TotalSeconds:0.0} s");
        await ClusterDemo.WaitForAsync("every VM in the inventory", async () =>
            (await api.GetAsync("/api/inventory")).GetProperty("vms").GetArrayLength() == vmCount, TimeSpan.FromSeconds(120));
        return (a, b, disks);
    }

    private sealed record Throughput(long Completed, TimeSpan Elapsed, long SettlingRefusals, long RssPeak,
        List<double> StartLatencies, List<double> ShowLatencies, List<double> ListLatencies);

    /// <summary>Keeps <paramref name="inFlight"/> migrations going for <paramref name="duration"/>, each worker moving its own disk back and forth.</summary>
    private static async Task<Throughput> ThroughputAsync(IReadOnlyList<ApiClient> apis, MigrationEventReader events, List<SimDisk> disks, string a, string b,
        int inFlight, TimeSpan duration, int coordinatorPid, bool quiet)
    {
        var started = 0L;
        var completed = 0L;
        var settlingRefusals = 0L;
        var startLatencies = new List<double>();
        var lastIds = new string[inFlight];
        using var stop = new CancellationTokenSource(duration);
        var run = Stopwatch.StartNew();
        var workers = Enumerable.Range(0, inFlight).Select(w => Task.Run(async () =>
        {
            var disk = disks[w % disks.Count];
            var api = apis[w % apis.Count]; // with several Coordinators, the workers spread over their APIs
            while (!stop.IsCancellationRequested)
            {
                var ask = Stopwatch.StartNew();
                string id;
                try
                {
                    id = await api.StartMigrationAsync(disk.Vm, disk.Image, disk.OnA ? b : a, "pre-copy");
                }
                catch (ApiException e) when (e.Code == "DISK_IN_ACTIVE_MIGRATION" && e.Message.Contains("was just moved"))
                {
                    // The inventory learns a disk's new place from its host's next report, which can come a moment
                    // after the migration completed: until then the disk is settling and a start is refused with that
                    // reason. Counted, and asked again shortly, as a careful client would.
                    Interlocked.Increment(ref settlingRefusals);
                    await Task.Delay(20);
                    continue;
                }
                lock (startLatencies) startLatencies.Add(ask.Elapsed.TotalMilliseconds);
                Interlocked.Increment(ref started);
                lastIds[w] = id;
                var finished = await FinishedOrExplainedAsync(api, events, id);
                Require(finished, id);
                disk.OnA = !disk.OnA;
                Interlocked.Increment(ref completed);
            }
        })).ToList();
        var showLatencies = new List<double>();
        var listLatencies = new List<double>();
        var rssPeak = 0L;
        var sampler = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                rssPeak = Math.Max(rssPeak, BenchProbes.RssBytes(coordinatorPid));
                if (lastIds.FirstOrDefault(x => x is not null) is { } some)
                    showLatencies.Add(await BenchProbes.TimeAsync(() => apis[0].GetAsync($"/api/migrations/{some}")));
                listLatencies.Add(await BenchProbes.TimeAsync(() => apis[0].GetAsync("/api/migrations?active=true")));
                await Task.Delay(500);
            }
        });
        var progress = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                await Task.Delay(5000);
                if (!quiet) Console.WriteLine($"  {run.Elapsed.TotalSeconds,5:0} s: {Interlocked.Read(ref completed)} completed, {Interlocked.Read(ref started) - Interlocked.Read(ref completed)} in flight");
            }
        });
        await Task.WhenAll(workers);
        var elapsed = run.Elapsed;
        await sampler;
        await progress;
        startLatencies.Sort();
        showLatencies.Sort();
        listLatencies.Sort();
        startLatencies.Sort();
        showLatencies.Sort();
        listLatencies.Sort();
        return new Throughput(completed, elapsed, settlingRefusals, rssPeak, startLatencies, showLatencies, listLatencies);
    }

    private sealed class SimDisk(string vm, string image)
    {
        public string Vm { get; } = vm;
        public string Image { get; } = image;
        public bool OnA { get; set; }
    }

    /// <summary>The migration's end from the event stream; when none came in time, what the API says of it, in the error.</summary>
    private static async Task<JsonElement> FinishedOrExplainedAsync(ApiClient api, MigrationEventReader events, string id)
    {
        try
        {
            return await events.FinishedAsync(id, TimeSpan.FromMinutes(1));
        }
        catch (TimeoutException e)
        {
            var now = await api.GetAsync($"/api/migrations/{id}");
            throw new TimeoutException($"{e.Message}; the API says: {now}");
        }
    }

    private static void Require(JsonElement migration, string id)
    {
        if (migration.GetProperty("status").GetString() != "completed")
            throw new InvalidOperationException($"migration {id} ended {migration.GetProperty("status").GetString()}: {migration}");
    }


    private static double Percentile(List<double> sorted, double p) =>
        sorted.Count == 0 ? double.NaN : sorted[Math.Min(sorted.Count - 1, (int)Math.Ceiling(p * sorted.Count) - 1)];

}
