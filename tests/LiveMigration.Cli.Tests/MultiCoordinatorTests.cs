using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json;
using LiveMigration.Cli.Local;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Coordinator.Tests.Persistence;
using Npgsql;
using Xunit.Abstractions;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// Issue 11: <c>lsm local up --coordinators 3 --journal postgres://...</c> on sim hosts (real processes, a real PostgreSQL).
/// Migrations started through the APIs of different Coordinators run on more than one of them; the Coordinator running
/// some is SIGKILLed; every migration still completes exactly once, its sagas recovered by the others from the shared
/// journal (remember-entities): each disk ends on its destination with one chain and nothing is left on any domain.
/// </summary>
[Collection(LocalClusters.Name)]
public sealed class MultiCoordinatorTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const int Migrations = 6;
    private const long DiskBytes = 3L << 30;
    private static readonly TimeSpan CompletionLimit = TimeSpan.FromSeconds(75);

    private readonly PostgresServer _postgres = new();
    private readonly LocalClusterSession _cluster = new();
    private readonly Stopwatch _clock = Stopwatch.StartNew();

    public Task InitializeAsync() => _postgres.InitializeAsync();

    public async Task DisposeAsync()
    {
        try
        {
            await _cluster.DisposeAsync();
        }
        finally
        {
            await _postgres.DisposeAsync();
        }
    }

    [Fact]
    public async Task Migrations_spread_over_three_coordinators_complete_exactly_once_when_one_is_killed()
    {
        var database = new NpgsqlConnectionStringBuilder(await _postgres.CreateDatabaseAsync()).Database;
        var journal = $"postgres://postgres@127.0.0.1:{_postgres.Port}/{database}";

        // refused before anything starts: SQLite files are one Coordinator's each
        var refused = await CliProcess.RunAsync(null, "local", "up", "--data-dir", _cluster.DataDirectory, "--coordinators", "3", "--api-port", "0");
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Contains("--journal postgres://", refused.Stdout + refused.Stderr);
        Assert.False(File.Exists(LocalClusterState.PathIn(_cluster.DataDirectory)), "a refused up wrote a state file");

        Directory.CreateDirectory(_cluster.Storage);
        // 3 GiB preallocated bases copied at 128 MiB/s: each migration's internal copy takes 24 s, so the kill (a few seconds
        // after the starts, more on a loaded machine) lands while every saga runs; it costs no time, as the dead
        // Coordinator's sagas come back only about 40 s after the kill anyway (below)
        var up = await CliProcess.RunAsync(null, "local", "up", "--hypervisor", "sim", "--hosts", "3", "--coordinators", "3", "--journal", journal,
            "--sim-copy-rate", "128MiB/s", "--data-dir", _cluster.DataDirectory, "--api-port", "0", "--fast-timings", "--timeout", "75",
            "--storage-root", _cluster.Storage);
        Assert.True(up.ExitCode == 0, up + "\n" + _cluster.LogTails());
        Log("cluster up");
        var state = (await LocalClusterState.ReadAsync(_cluster.DataDirectory))!;
        var coordinators = state.Nodes.Where(n => n.Role == "coordinator").ToList();
        Assert.Equal(new[] { "coordinator", "coordinator-2", "coordinator-3" }, coordinators.Select(c => c.Name));
        Assert.All(coordinators, c => Assert.True(c.Alive && c.ApiUrl is not null && c.Address is not null, $"{c.Name}: {c}"));
        Assert.Equal(3, coordinators.Select(c => c.ApiUrl).Distinct().Count());
        Assert.Equal(3, coordinators.Select(c => c.DataDirectory).Distinct().Count());
        Assert.Equal(coordinators[0].ApiUrl, state.ApiUrl);
        var status = await CliProcess.RunAsync(null, "local", "status", "--data-dir", _cluster.DataDirectory);
        Assert.All(coordinators, c => Assert.Contains(c.ApiUrl!, status.Stdout));

        using var http = _cluster.Http();
        http.Timeout = TimeSpan.FromSeconds(20);
        var apis = coordinators.Select(c => c.ApiUrl!).ToList();
        var members = (await GetAsync(http, $"{apis[1]}/api/cluster")).GetProperty("members").EnumerateArray().ToList();
        Assert.Equal(3, members.Count(m => m.GetProperty("roles").EnumerateArray().Any(r => r.GetString() == "coordinator")));

        // domain d{i} holds vm-{i}'s disk and receives vm-{i-1}'s: two migrations per domain, two per host (the admission
        // limits), so all six run at once
        // (each kind asked of the three APIs at once: the SPM and the hosts take them one by one anyway)
        var domains = (await Task.WhenAll(Enumerable.Range(0, Migrations).Select(async i =>
            (await PostAsync(http, $"{apis[i % 3]}/api/domains", new { name = $"d{i}", path = _cluster.Storage, capacityBytes = 16 * DiskBytes }))
            .GetProperty("id").GetString()!))).ToList();
        var vms = (await Task.WhenAll(Enumerable.Range(0, Migrations).Select(async i =>
        {
            var vm = await PostAsync(http, $"{apis[i % 3]}/api/vms", new
            {
                name = $"vm-{i}", host = $"host-{i % 3 + 1}",
                disks = new[] { new { sizeBytes = DiskBytes, domain = domains[i], snapshots = 1, preallocated = true } },
            });
            return (Vm: vm.GetProperty("id").GetString()!, Image: vm.GetProperty("disks")[0].GetProperty("image").GetString()!);
        }))).ToList();
        Log("domains and VMs made");

        // each migration started through another Coordinator's API
        var started = (await Task.WhenAll(Enumerable.Range(0, Migrations).Select(i => PostAsync(http, $"{apis[i % 3]}/api/migrations", new
            {
                vm = vms[i].Vm, disks = new[] { new { image = vms[i].Image, destination = domains[(i + 1) % Migrations] } },
            }))))
            .Select(answer => answer.GetProperty("id").GetString()!).ToHashSet();
        Log($"{Migrations} migrations started");

        // where each saga runs: its shard (the region's own extractor) on the node whose region holds that shard
        var byNode = await SagasByNodeAsync(http, apis[0], started, coordinators);
        output.WriteLine("sagas by Coordinator: " + string.Join("; ", byNode.Select(n => $"{n.Key}: {n.Value.Count}")));
        Assert.True(byNode.Count(n => n.Value.Count > 0) >= 2, $"the sagas run on one Coordinator only: {string.Join("; ", byNode.Select(n => $"{n.Key} {n.Value.Count}"))}");
        // The first Coordinator when it runs any (the oldest: the singletons and the shard coordinator move too, the hardest
        // loss), else the busiest. Either way its sagas come back about 40 s after the kill: the resolver downs it after its
        // stable-after (20 s), and the shard coordinator (like a singleton) takes over only a removal margin (20 s) later.
        var victim = byNode["coordinator"].Count > 0 ? "coordinator" : byNode.MaxBy(n => n.Value.Count).Key;
        var victimSagas = byNode[victim];
        var survivorApi = coordinators.First(c => c.Name != victim).ApiUrl!;

        var before = await ListAsync(http, survivorApi);
        Assert.All(victimSagas, id => Assert.False(before[id].GetProperty("finished").GetBoolean(),
            $"migration {id} on {victim} finished before the kill: {before[id]}"));
        var node = coordinators.Single(c => c.Name == victim);
        var logLengthsAtKill = coordinators.ToDictionary(c => c.Name, c => File.ReadAllText(c.LogFile).Length);
        ProcessTable.Signal(node.Pid, ProcessTable.SigKill);
        await ProcessTable.WaitGoneAsync([node.Pid], pid => ProcessTable.IsAlive(pid, node.StartTime), TimeSpan.FromSeconds(10));
        Log($"SIGKILLed {victim} (pid {node.Pid}), which ran {victimSagas.Count} saga(s): {string.Join(", ", victimSagas)}");

        // every migration completes, read from the journal through a surviving Coordinator's API
        var deadline = DateTime.UtcNow + CompletionLimit;
        Dictionary<string, JsonElement> final;
        while (true)
        {
            try
            {
                final = await ListAsync(http, survivorApi);
                if (final.Count >= Migrations && final.Values.All(m => m.GetProperty("finished").GetBoolean())) break;
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException or JsonException) { }
            Assert.True(DateTime.UtcNow < deadline, $"not every migration finished within {CompletionLimit.TotalSeconds:0} s of the kill\n{Errors()}\n{_cluster.LogTails(40)}");
            await Task.Delay(500);
        }
        Log("every migration finished");
        // none lost, none doubled: exactly the started ones, each completed once
        Assert.Equal(started.Order(), final.Keys.Order());
        Assert.All(final.Values, m => Assert.True(m.GetProperty("status").GetString() == "completed", m.ToString()));
        // the dead Coordinator's sagas went on elsewhere: a survivor recovered each from the shared journal
        var survivorLogs = string.Join("\n", coordinators.Where(c => c.Name != victim).Select(c => File.ReadAllText(c.LogFile)));
        Assert.All(victimSagas, id => Assert.Contains($"Migration {id} recovered at event", survivorLogs));
        if (victim == "coordinator")
        {
            // the admission limits moved with the oldest: the survivors' sagas were told to say what they hold, and the new
            // limits counted from the journal the dead one's sagas, which came back only later
            var sinceKill = string.Join("\n", coordinators.Where(c => c.Name != victim).Select(c => File.ReadAllText(c.LogFile)[logLengthsAtKill[c.Name]..]));
            Assert.Contains("The admission limits started anew", sinceKill);
            var counted = System.Text.RegularExpressions.Regex.Match(sinceKill, @"the journal has (\d+) migration\(s\) running, (\d+) of them not heard from yet");
            Assert.True(counted.Success, "the new admission limits did not count the journal's running migrations");
            Assert.True(int.Parse(counted.Groups[2].Value) >= victimSagas.Count, counted.Value);
        }

        // each disk on its destination, in one chain of its two volumes; every domain holds exactly one disk's data: nothing
        // left on a source, no second copy on a destination
        for (var i = 0; i < Migrations; i++)
        {
            var disk = (await GetAsync(http, $"{survivorApi}/api/vms/vm-{i}")).GetProperty("disks")[0];
            var chain = disk.GetProperty("chain").EnumerateArray().ToList();
            Assert.True(chain.Count == 2, $"vm-{i}: {disk}");
            Assert.All(chain, layer => Assert.Equal(domains[(i + 1) % Migrations], layer.GetProperty("domain").GetString()));
        }
        await WaitDomainsHoldOneDiskEachAsync(http, survivorApi, domains);
        Log("disks and domains checked");

        var down = await CliProcess.RunAsync(null, "local", "down", "--data-dir", _cluster.DataDirectory);
        Assert.True(down.ExitCode == 0, down.ToString());
        Assert.All((await LocalClusterState.ReadAsync(_cluster.DataDirectory))!.Nodes, n => Assert.False(n.Alive, $"{n.Name} pid {n.Pid} runs after down"));
    }

    private void Log(string what) => output.WriteLine($"{_clock.Elapsed.TotalSeconds,6:0.0} s  {what}");

    /// <summary>
    /// The migrations by the Coordinator running their sagas: the region stats name each node's shards, and a migration's
    /// shard is its id through the region's own message extractor. Asked until every saga is placed (a shard is allocated
    /// as its first message arrives).
    /// </summary>
    private async Task<Dictionary<string, List<string>>> SagasByNodeAsync(HttpClient http, string api, IEnumerable<string> migrations,
        IReadOnlyList<LocalNodeState> coordinators)
    {
        var extractor = new MigrationMessageExtractor(new MigrationShardingOptions().ShardCount);
        var shardOf = migrations.ToDictionary(id => id, id => extractor.ShardId(id));
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(15);
        while (true)
        {
            var stats = await GetAsync(http, $"{api}/api/cluster/sharding/regions/migration/stats");
            var nodeOfShard = stats.GetProperty("nodes").EnumerateArray()
                .SelectMany(n => n.GetProperty("shards").EnumerateArray().Select(s => (Shard: s.GetProperty("shardId").GetString()!, Address: n.GetProperty("address").GetString()!)))
                .ToDictionary(s => s.Shard, s => s.Address);
            if (shardOf.Values.All(nodeOfShard.ContainsKey))
                return coordinators.ToDictionary(c => c.Name, c => shardOf.Where(m => nodeOfShard[m.Value] == c.Address).Select(m => m.Key).ToList());
            Assert.True(DateTime.UtcNow < deadline, $"the region stats do not place every migration's shard: {stats}");
            await Task.Delay(300);
        }
    }

    /// <summary>The domains as the SPM reports them settle on one disk (its preallocated base; the empty leaf) each.</summary>
    private async Task WaitDomainsHoldOneDiskEachAsync(HttpClient http, string api, IReadOnlyList<string> domains)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (true)
        {
            var used = (await GetAsync(http, $"{api}/api/domains")).GetProperty("domains").EnumerateArray()
                .ToDictionary(d => d.GetProperty("id").GetString()!, d => d.GetProperty("usedBytes").GetInt64());
            if (domains.All(d => used[d] == DiskBytes)) return;
            Assert.True(DateTime.UtcNow < deadline,
                $"each domain should hold one disk ({DiskBytes} bytes): {string.Join(", ", domains.Select(d => $"{d} {used[d]}"))}");
            await Task.Delay(500);
        }
    }

    /// <summary>The nodes' ERROR and WARNING lines (the cluster's own view of what went wrong), for a failure's message.</summary>
    private string Errors()
    {
        var logs = Path.Combine(_cluster.DataDirectory, "logs");
        if (!Directory.Exists(logs)) return "";
        return string.Join("\n", Directory.GetFiles(logs).Order().SelectMany(f =>
            File.ReadLines(f).Where(l => l.StartsWith("[ERROR]") || l.StartsWith("[WARNING]") && !l.Contains("unauthenticated"))
                .Select(l => $"{Path.GetFileName(f)}: {(l.Length > 400 ? l[..400] : l)}").TakeLast(40)));
    }

    private async Task<Dictionary<string, JsonElement>> ListAsync(HttpClient http, string api) =>
        (await GetAsync(http, $"{api}/api/migrations")).GetProperty("migrations").EnumerateArray()
        .ToDictionary(m => m.GetProperty("id").GetString()!, m => m.Clone());

    private async Task<JsonElement> GetAsync(HttpClient http, string url)
    {
        using var response = await http.GetAsync(url);
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, $"GET {url}: {(int)response.StatusCode} {text}\n{Errors()}");
        return JsonDocument.Parse(text).RootElement.Clone();
    }

    private async Task<JsonElement> PostAsync(HttpClient http, string url, object body)
    {
        using var response = await http.PostAsJsonAsync(url, body);
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, $"POST {url}: {(int)response.StatusCode} {text}\n{Errors()}");
        return JsonDocument.Parse(text).RootElement.Clone();
    }
}
