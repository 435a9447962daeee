using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using LiveMigration.Cli.Local;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// The quick subset of the fault matrix (issue "The fault matrix"): real processes started by <c>lsm local up</c>
/// with a crash point (<c>LSM_FAULT_PLAN</c>), a writing guest, the migration run to its end the way the README tells
/// an operator (restart what died with <c>lsm local up</c>, abandon a suspended migration), then DESIGN §7 checked
/// from the outside: no durable write lost, the VM runs (or starts) on exactly one complete LEGAL chain, no ILLEGAL
/// or stray volume on any domain. Each case adds a line to <c>var/faults/report.json</c>.
/// </summary>
[Collection(LocalClusters.Name)]
public sealed class FaultMatrixTests : IAsyncLifetime
{
    private readonly LocalClusterSession _cluster = new();

    public Task InitializeAsync() => Task.CompletedTask;
    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    public static TheoryData<string, string, string, string> Cases => new()
    {
        // strategy, process, action, point
        { "pre-copy", "host-1", "kill-self", "Pivot/host-done" },
        { "pre-copy", "coordinator", "kill-self", "SyncInternalVolumes/outcome-received" },
        { "pre-copy", "coordinator", "kill-self", "Pivot/before-send" },
        { "pre-copy", "host-1", "kill-self", "DeleteSourceImage/host-received" },
        { "post-copy", "host-1", "kill-qemu", "LiveSnapshotToDestination/host-done" },
        { "post-copy", "host-1", "kill-self", "LiveSnapshotToDestination/host-done" },
        { "post-copy", "coordinator", "kill-self", "SwitchBackingChain/outcome-received" },
        { "pre-copy", "host-1", "kill-qemu", "Pivot/host-received" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task A_crash_at_a_step_keeps_every_durable_write_and_leaves_one_legal_chain(string strategy, string process, string action, string point)
    {
        var clock = Stopwatch.StartNew();
        _cluster.Environment = new Dictionary<string, string>
        {
            ["LSM_FAULT_PLAN"] = $"{process}:{action}@{point}",
            ["LSM_ALLOW_FAULTS"] = "1",
        };
        await _cluster.UpAsync();
        var storage = Path.Combine(_cluster.DataDirectory, "storage");
        await _cluster.Ok("domain", "create", "sdA", "--path", storage, "--capacity", "2GiB");
        await _cluster.Ok("domain", "create", "sdB", "--path", storage, "--capacity", "2GiB");
        await _cluster.Ok("vm", "create", "vm1", "--host", "host-1", "--disk", "64MiB@sdA:snapshots=2");
        await _cluster.Ok("vm", "io", "vm1", "--rate", "4MiB/s", "--seconds", "4");
        var started = await _cluster.Json("migrate", "vm1", "--to", "sdB", "--strategy", strategy);
        var id = started.GetProperty("id").GetString()!;

        var final = await RunToEndAsync(id);
        var status = final.GetProperty("status").GetString()!;

        // The VM runs, or starts, on the chain its host recorded.
        var vm = await VmAsync();
        var restartable = true;
        if (!vm.GetProperty("running").GetBoolean())
        {
            var start = await _cluster.Lsm("vm", "start", "vm1");
            restartable = start.ExitCode == 0;
            Assert.True(restartable, $"the VM does not start again after {process}:{action}@{point} ({status})\n{start}\n{_cluster.LogTails()}");
            vm = await VmAsync();
        }
        var verify = JsonDocument.Parse((await _cluster.Lsm("vm", "verify", "vm1", "--json")).Stdout).RootElement;
        var chain = vm.GetProperty("disks").EnumerateArray().Single().GetProperty("chain").EnumerateArray()
            .Select(l => l.GetProperty("volume").GetString()!).ToHashSet();
        var (volumes, illegal) = ScanDomains(storage);
        var leftovers = volumes.Where(v => !chain.Contains(v)).ToList();
        var lost = verify.TryGetProperty("lost", out var l) ? l.GetInt64() : -1;

        await ReportAsync(new JsonObject
        {
            ["strategy"] = strategy,
            ["adapter"] = "qmp",
            ["fault"] = $"{process}:{action}",
            ["point"] = point,
            ["finalStatus"] = status,
            ["writesChecked"] = verify.TryGetProperty("checked", out var c) ? c.GetInt64() : -1,
            ["writesLost"] = lost,
            ["leftoverVolumes"] = leftovers.Count,
            ["illegalVolumes"] = illegal,
            ["vmRunningOn"] = vm.GetProperty("disks").EnumerateArray().Single().GetProperty("domain").GetString(),
            ["restartable"] = restartable,
            ["seconds"] = Math.Round(clock.Elapsed.TotalSeconds, 1),
        });

        // A rollback that names its cause ("failed (VM_NOT_RUNNING)") is a clean end too.
        Assert.True(new[] { "completed", "failed", "cancelled", "abandoned" }.Any(end => status.StartsWith(end, StringComparison.Ordinal)),
            $"ended {status}\n{final}\n{_cluster.LogTails()}");
        Assert.True(lost == 0, $"durable writes lost after {process}:{action}@{point}: {verify}\n{_cluster.LogTails()}");
        Assert.True(illegal == 0 && leftovers.Count == 0,
            $"after {process}:{action}@{point} ({status}): {illegal} ILLEGAL volumes, leftovers {string.Join(", ", leftovers)}\n{_cluster.LogTails()}");
    }

    /// <summary>Follows the migration, restarting whatever died (as `lsm local up` does) and abandoning a suspension.</summary>
    private async Task<JsonElement> RunToEndAsync(string id)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(4);
        while (DateTime.UtcNow < deadline)
        {
            await Task.Delay(500);
            var state = await LocalClusterState.ReadAsync(_cluster.DataDirectory);
            if (state is not null && state.Nodes.Any(n => !Directory.Exists($"/proc/{n.Pid}")))
            {
                await _cluster.UpAsync();
                continue;
            }
            var shown = await _cluster.Lsm("migration", "show", id, "--json");
            if (shown.ExitCode != 0) continue; // the Coordinator is on its way back
            var migration = JsonDocument.Parse(shown.Stdout).RootElement;
            var status = migration.GetProperty("status").GetString()!;
            if (migration.GetProperty("finished").GetBoolean()) return migration;
            if (status.StartsWith("suspended", StringComparison.Ordinal))
                await _cluster.Ok("migration", "abandon", id);
        }
        throw new Xunit.Sdk.XunitException($"migration {id} did not end within 4 minutes\n{_cluster.LogTails()}");
    }

    private static (List<string> Volumes, int Illegal) ScanDomains(string storage)
    {
        var volumes = new List<string>();
        var illegal = 0;
        foreach (var meta in Directory.EnumerateFiles(storage, "*.meta", SearchOption.AllDirectories))
        {
            volumes.Add(Path.GetFileNameWithoutExtension(meta));
            if (File.ReadLines(meta).Any(line => line.Trim() == "LEGALITY=ILLEGAL")) illegal++;
        }
        return (volumes, illegal);
    }

    private static async Task ReportAsync(JsonObject line)
    {
        var root = AppContext.BaseDirectory;
        while (root is not null && !File.Exists(Path.Combine(root, "LiveMigration.Akka.sln"))) root = Path.GetDirectoryName(root);
        var folder = Path.Combine(root ?? Path.GetTempPath(), "var", "faults");
        Directory.CreateDirectory(folder);
        // One JSON object per line, appended: the cases run one after the other in this class.
        var cases = Path.Combine(folder, "cases.jsonl");
        await File.AppendAllTextAsync(cases, line.ToJsonString() + "\n");
        // report.json: every case so far, and the saga simulation's summary when it ran.
        var report = new JsonObject
        {
            ["cases"] = new JsonArray((await File.ReadAllLinesAsync(cases)).Where(l => l.Length > 0).Select(l => JsonNode.Parse(l)).ToArray()),
        };
        var simulation = Path.Combine(folder, "simulation.json");
        if (File.Exists(simulation)) report["simulation"] = JsonNode.Parse(await File.ReadAllTextAsync(simulation));
        await File.WriteAllTextAsync(Path.Combine(folder, "report.json"), report.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        // …and the same cases as a table for people (./run.sh faults prints it).
        var rows = report["cases"]!.AsArray().Select(c => string.Format(System.Globalization.CultureInfo.InvariantCulture,
            "{0,-10} {1,-24} {2,-42} {3,-24} {4,8} {5,5} {6,9} {7,8} {8,12} {9,6:0.0}",
            c!["strategy"], c["fault"], c["point"], c["finalStatus"], c["writesChecked"], c["writesLost"], c["leftoverVolumes"],
            c["illegalVolumes"], c["restartable"], (double)c["seconds"]!));
        var header = string.Format("{0,-10} {1,-24} {2,-42} {3,-24} {4,8} {5,5} {6,9} {7,8} {8,12} {9,6}",
            "strategy", "fault", "point", "final status", "checked", "lost", "leftovers", "illegal", "restartable", "s");
        await File.WriteAllLinesAsync(Path.Combine(folder, "report.txt"), [header, .. rows]);
    }

    private Task<JsonElement> VmAsync() => _cluster.Json("vm", "show", "vm1");
}
