using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.Json.Nodes;
using LiveMigration.Cli.Local;
using LiveMigration.Demo.Cluster;
using LiveMigration.Shared.Hosting;

namespace LiveMigration.Demo.Bench;

/// <summary>
/// The two scenarios of <c>./run.sh bench control-plane</c> with migrations that last (issue "The control plane at
/// data-center scale"), each on a fresh local cluster of real processes with sim hosts whose copies are paced
/// (<c>--sim-copy-rate</c>) so that no migration ends while it is measured:
/// <list type="number">
/// <item>in flight: N migrations started through the API and kept running while a sampler times the API (show one, a page
/// of the list, a start) and the dashboard's refresh, and reads the Coordinator's memory;</item>
/// <item>recovery: the Coordinator SIGKILLed with N migrations in flight and started again (as <c>lsm local up</c> does):
/// the time from its restart until every migration is moving again, i.e. has said something on the event stream (a
/// saga publishes when its host's progress reaches it, at most once a second, so this errs long by up to a second).</item>
/// </list>
/// </summary>
internal static class InFlightBench
{
    /// <summary>Each disk's preallocated base: at <see cref="CopyRate"/> its copy alone lasts ten minutes.</summary>
    private const long DiskBytes = 600L << 20;
    private const long CopyRate = 1L << 20;
    /// <summary>Requests at once while VMs are made and migrations started, as a tool or a few operators would send them.</summary>
    private const int Concurrency = 8;

    public sealed record InFlightResult(int InFlight, double StartsPerSecond, long RssPeakBytes,
        List<double> Start, List<double> Show, List<double> List, List<double> Dashboard, Dictionary<string, List<double>> DashboardParts);

    /// <summary>
    /// What the recovery took, from the restart on: wall times, and the CPU the restarted Coordinator used until every
    /// migration moved (its start included) beside the sim hosts' over the same time, which say whether the wait was
    /// computing or waiting.
    /// </summary>
    public sealed record RecoveryResult(int InFlight, double StreamOpenSeconds, double FirstMovingSeconds, double AllMovingSeconds, int Moving,
        double CoordinatorCpuSeconds, double HostsCpuSeconds);

    public static async Task<InFlightResult> InFlightAsync(int count, int hosts, int sampleSeconds, string dataDir)
    {
        const int spare = 200; // VMs kept still, for the starts timed while the others are in flight
        return await WithClusterAsync(dataDir, hosts, async (cluster, api, token) =>
        {
            var coordinatorPid = cluster.Nodes.Single(n => n.Name == "coordinator").Pid;
            var (b, disks) = await PrepareAsync(api, dataDir, count + spare, hosts);
            var rssPeak = 0L;
            using var stopSampling = new CancellationTokenSource();
            var rss = Task.Run(async () =>
            {
                while (!stopSampling.IsCancellationRequested)
                {
                    rssPeak = Math.Max(rssPeak, BenchProbes.RssBytes(coordinatorPid));
                    await Task.Delay(500);
                }
            });
            var clock = Stopwatch.StartNew();
            var ids = await StartAllAsync(api, disks.Take(count).ToList(), b);
            var startsPerSecond = count / clock.Elapsed.TotalSeconds;
            Console.WriteLine($"  {count} migrations started in {clock.Elapsed.TotalSeconds:0.0} s ({startsPerSecond:0} starts/s, {Concurrency} at a time)");
            var active = (await api.GetAsync("/api/migrations?active=true&limit=1")).GetProperty("total").GetInt32();
            if (active < count)
                throw new InvalidOperationException($"{count} migrations started but the API lists {active} active: some ended early");

            // Now, with every migration in flight: what an operator and the dashboard see, for a while.
            var start = new List<double>();
            var show = new List<double>();
            var list = new List<double>();
            var dashboard = new List<double>();
            // each request of the refresh on its own too, to say which one a slow refresh waits for
            // (dashboard.js: VM_PAGE and MIGRATIONS_SHOWN)
            string[] dashboardPaths = ["/api/hosts", "/api/domains", "/api/vms?limit=50&offset=0", "/api/migrations?limit=100"];
            var dashboardParts = dashboardPaths.ToDictionary(p => p, _ => new List<double>());
            var random = new Random(7);
            var spareAt = count;
            var until = Stopwatch.StartNew();
            while (until.Elapsed < TimeSpan.FromSeconds(sampleSeconds))
            {
                show.Add(await BenchProbes.TimeAsync(() => api.GetAsync($"/api/migrations/{ids[random.Next(ids.Count)]}")));
                list.Add(await BenchProbes.TimeAsync(() => api.GetAsync($"/api/migrations?active=true&limit=100&offset={random.Next(count / 100) * 100}")));
                if (spareAt < disks.Count)
                {
                    var disk = disks[spareAt++];
                    start.Add(await BenchProbes.TimeAsync(() => api.StartMigrationAsync(disk.Vm, disk.Image, b, "pre-copy")));
                }
                // the dashboard's refresh: hosts, domains, its page of VMs (dashboard.js asks for 50) and the 100 newest
                // migrations, at once
                dashboard.Add(await BenchProbes.TimeAsync(() => Task.WhenAll(dashboardPaths.Select(async path =>
                    dashboardParts[path].Add(await BenchProbes.TimeAsync(() => api.GetAsync(path)))))));
                await Task.Delay(250);
            }
            await stopSampling.CancelAsync();
            await rss;
            foreach (var samples in new[] { start, show, list, dashboard }.Concat(dashboardParts.Values)) samples.Sort();
            return new InFlightResult(spareAt, startsPerSecond, rssPeak, start, show, list, dashboard, dashboardParts);
        });
    }

    public static async Task<RecoveryResult> RecoveryAsync(int count, int hosts, string dataDir)
    {
        return await WithClusterAsync(dataDir, hosts, async (cluster, api, token) =>
        {
            var (b, disks) = await PrepareAsync(api, dataDir, count, hosts);
            var ids = await StartAllAsync(api, disks, b);

            // every migration moving before the crash: each has said something on the stream since it started
            var before = new ConcurrentDictionary<string, TimeSpan>();
            using (var stream = new MigrationEventReader(cluster.ApiUrl, token) { OnChange = m => before.TryAdd(m.GetProperty("id").GetString()!, TimeSpan.Zero) })
            {
                await stream.StartAsync();
                await ClusterDemo.WaitForAsync($"all {count} migrations moving", () => Task.FromResult(ids.All(before.ContainsKey)), TimeSpan.FromSeconds(120));
            }

            var coordinator = cluster.Nodes.Single(n => n.Name == "coordinator");
            ProcessTable.Signal(coordinator.Pid, ProcessTable.SigKill);
            await ClusterDemo.WaitForAsync("the Coordinator gone", () => Task.FromResult(!ProcessTable.IsAlive(coordinator.Pid)), TimeSpan.FromSeconds(10));
            Console.WriteLine($"  Coordinator (pid {coordinator.Pid}) SIGKILLed with {count} migrations in flight; starting it again");

            // the restart, as `lsm local up` does it for a dead node; the stream is opened as soon as the API answers
            var hostPids = cluster.Nodes.Where(n => n.Name != coordinator.Name).Select(n => n.Pid).ToList();
            var hostsCpuBefore = hostPids.Sum(BenchProbes.CpuSeconds);
            var clock = Stopwatch.StartNew();
            var restart = LocalClusterLauncher.UpAsync(Options(dataDir, hosts));
            var after = new ConcurrentDictionary<string, TimeSpan>();
            MigrationEventReader? reader = null;
            double streamOpen;
            while (true)
            {
                var attempt = new MigrationEventReader(cluster.ApiUrl, token) { OnChange = m => after.TryAdd(m.GetProperty("id").GetString()!, clock.Elapsed) };
                try
                {
                    await attempt.StartAsync();
                    reader = attempt;
                    streamOpen = clock.Elapsed.TotalSeconds;
                    break;
                }
                catch (HttpRequestException)
                {
                    attempt.Dispose();
                    if (clock.Elapsed > TimeSpan.FromSeconds(120)) throw new TimeoutException("the restarted Coordinator's API did not answer within 120 s");
                    await Task.Delay(50);
                }
            }
            using (reader)
            {
                var wanted = ids.ToHashSet();
                var limit = TimeSpan.FromSeconds(120);
                while (wanted.Any(id => !after.ContainsKey(id)) && clock.Elapsed < limit) await Task.Delay(50);
                var hostsCpu = hostPids.Sum(BenchProbes.CpuSeconds) - hostsCpuBefore;
                var restarted = await restart;
                var coordinatorCpu = BenchProbes.CpuSeconds(restarted.Nodes.Single(n => n.Name == coordinator.Name).Pid);
                var moving = wanted.Count(after.ContainsKey);
                var times = wanted.Where(after.ContainsKey).Select(id => after[id].TotalSeconds).Order().ToList();
                return new RecoveryResult(count, streamOpen, times.FirstOrDefault(double.NaN), moving == count ? times[^1] : double.NaN, moving,
                    coordinatorCpu, hostsCpu);
            }
        });
    }

    private static LocalClusterOptions Options(string dataDir, int hosts) => new(dataDir)
    {
        // every copy running at once, paced: the SPM's bound on copies at once lifted as the admission limits are
        Hosts = hosts, ApiPort = 0, Hypervisor = "sim", MaxPerHost = 0, MaxPerDomain = 0, SpmMaxCopies = 0, SimCopyBytesPerSecond = CopyRate,
        ExtraHocon = Environment.GetEnvironmentVariable("LSM_BENCH_HOCON"),
    };

    private static async Task<T> WithClusterAsync<T>(string dataDir, int hosts, Func<LocalClusterState, ApiClient, string?, Task<T>> run)
    {
        await DemoSetup.ClearPreviousRunAsync(dataDir);
        try
        {
            var cluster = await LocalClusterLauncher.UpAsync(Options(dataDir, hosts));
            var token = cluster.ApiTokenFile is { } tokenFile ? ApiTokenFile.Read(tokenFile) : null;
            using var api = new ApiClient(cluster.ApiUrl, token);
            return await run(cluster, api, token);
        }
        finally
        {
            await LocalClusterLauncher.DownAsync(dataDir);
            // the nodes' logs stay for whoever reads the figures next (the data directory goes)
            BenchProbes.KeepLogs(dataDir, Path.GetFileName(dataDir) + "-logs");
            try { Directory.Delete(dataDir, recursive: true); } catch (IOException) { }
        }
    }

    private sealed record Disk(string Vm, string Image);

    /// <summary>Domains a and b, and <paramref name="count"/> sim VMs on a (one disk with a 3-volume chain on a preallocated base each), spread over the hosts.</summary>
    private static async Task<(string B, List<Disk> Disks)> PrepareAsync(ApiClient api, string dataDir, int count, int hosts)
    {
        var domainRoot = LocalCluster.DomainRootOf(dataDir);
        await api.PostAsync("/api/domains", new { name = "a", path = domainRoot });
        var b = (await api.PostAsync("/api/domains", new { name = "b", path = domainRoot })).GetProperty("id").GetString()!;
        var clock = Stopwatch.StartNew();
        var disks = new Disk[count];
        await Parallel.ForEachAsync(Enumerable.Range(0, count), new ParallelOptions { MaxDegreeOfParallelism = Concurrency }, async (v, _) =>
        {
            var vm = await api.PostAsync("/api/vms", new
            {
                name = $"held-{v:D5}", host = $"host-{v % hosts + 1}",
                disks = new[] { new { sizeBytes = DiskBytes, domain = "a", snapshots = 2, preallocated = true } },
            });
            disks[v] = new Disk(vm.GetProperty("id").GetString()!, vm.GetProperty("disks")[0].GetProperty("image").GetString()!);
        });
        Console.WriteLine($"  {count} sim VMs made in {clock.Elapsed.TotalSeconds:0} s ({count / clock.Elapsed.TotalSeconds:0}/s)");
        return (b, disks.ToList());
    }

    private static async Task<List<string>> StartAllAsync(ApiClient api, List<Disk> disks, string destination)
    {
        var ids = new string[disks.Count];
        await Parallel.ForEachAsync(Enumerable.Range(0, disks.Count), new ParallelOptions { MaxDegreeOfParallelism = Concurrency }, async (i, _) =>
            ids[i] = await api.StartMigrationAsync(disks[i].Vm, disks[i].Image, destination, "pre-copy"));
        return ids.ToList();
    }

}
