using System.Text.Json;
using System.Text.Json.Nodes;
using LiveMigration.Cli.Local;
using LiveMigration.Demo.Cluster;

namespace LiveMigration.Cli.Tests.Faults;

/// <summary>What the outside check of one fault case found (DESIGN §7): the line the report gets.</summary>
public sealed record FaultOutcome(
    string FinalStatus, long WritesChecked, long WritesLost, IReadOnlyList<string> Leftovers, int IllegalVolumes,
    string? VmRunningOn, bool Restartable, JsonElement Migration, string Verify)
{
    public JsonObject ToReportLine(string strategy, string adapter, string fault, string point, TimeSpan took) => new()
    {
        ["strategy"] = strategy,
        ["adapter"] = adapter,
        ["fault"] = fault,
        ["point"] = point,
        ["finalStatus"] = FinalStatus,
        ["writesChecked"] = WritesChecked,
        ["writesLost"] = WritesLost,
        ["leftoverVolumes"] = Leftovers.Count,
        ["illegalVolumes"] = IllegalVolumes,
        ["vmRunningOn"] = VmRunningOn,
        ["restartable"] = Restartable,
        ["seconds"] = Math.Round(took.TotalSeconds, 1),
    };

    /// <summary>A clean end: completed, cancelled or rolled back (a failure that names its cause), or abandoned
    /// after a suspension; no durable write lost; no ILLEGAL or stray volume.</summary>
    public void AssertClean(string context, Func<string> logs)
    {
        Assert.True(new[] { "completed", "failed", "cancelled", "abandoned" }.Any(end => FinalStatus.StartsWith(end, StringComparison.Ordinal)),
            $"{context}: ended {FinalStatus}\n{Migration}\n{logs()}");
        Assert.True(Restartable, $"{context}: the VM does not start again ({FinalStatus})\n{logs()}");
        Assert.True(WritesLost == 0, $"{context}: durable writes lost: {Verify}\n{logs()}");
        Assert.True(IllegalVolumes == 0 && Leftovers.Count == 0,
            $"{context} ({FinalStatus}): {IllegalVolumes} ILLEGAL volumes, leftovers {string.Join(", ", Leftovers)}\n{logs()}");
    }
}

/// <summary>
/// The fault matrix's common moves, as an operator makes them with <c>lsm</c>: follow a migration to its end
/// (restarting whatever died with <c>lsm local up</c>, abandoning a suspension), then check §7 from the outside.
/// </summary>
public static class FaultCheck
{
    /// <summary>
    /// The common start of a fault case: domains sdA and sdB under <c>DATA/storage</c> and VM vm1 on
    /// <paramref name="vmHost"/> with one 64 MiB disk, a chain of three volumes on sdA. Returns the storage folder
    /// the outside check scans.
    /// </summary>
    public static async Task<string> CreateDomainsAndVmAsync(LocalClusterSession cluster, string vmHost = "host-1")
    {
        var storage = cluster.Storage;
        await cluster.Ok("domain", "create", "sdA", "--path", storage, "--capacity", "2GiB");
        await cluster.Ok("domain", "create", "sdB", "--path", storage, "--capacity", "2GiB");
        await cluster.Ok("vm", "create", "vm1", "--host", vmHost, "--disk", "64MiB@sdA:snapshots=2");
        return storage;
    }

    /// <summary>Follows the migration, restarting dead nodes and abandoning a suspension, until it is finished.</summary>
    public static async Task<JsonElement> RunToEndAsync(LocalClusterSession cluster, string id, TimeSpan? within = null)
    {
        var deadline = DateTime.UtcNow + (within ?? TimeSpan.FromMinutes(4));
        while (DateTime.UtcNow < deadline)
        {
            await Task.Delay(500);
            var state = await LocalClusterState.ReadAsync(cluster.DataDirectory);
            if (state is not null && state.Nodes.Any(n => !Directory.Exists($"/proc/{n.Pid}")))
            {
                await cluster.UpAsync();
                continue;
            }
            var shown = await cluster.Lsm("migration", "show", id, "--json");
            if (shown.ExitCode != 0) continue; // the Coordinator is on its way back
            var migration = JsonDocument.Parse(shown.Stdout).RootElement;
            var status = migration.GetProperty("status").GetString()!;
            if (migration.GetProperty("finished").GetBoolean()) return migration;
            if (status.StartsWith("suspended", StringComparison.Ordinal))
                await cluster.Ok("migration", "abandon", id);
        }
        throw new Xunit.Sdk.XunitException($"migration {id} did not end in time\n{cluster.LogTails()}");
    }

    /// <summary>
    /// Checks a finished migration of <paramref name="vm"/>'s disks: the VM runs, or starts, on the chains its host
    /// recorded; <c>lsm vm verify</c> finds every durable write; every volume under <paramref name="storageRoots"/> is
    /// in one of the VM's chains, and none is ILLEGAL.
    /// </summary>
    public static async Task<FaultOutcome> CheckAsync(LocalClusterSession cluster, string vm, JsonElement migration, params string[] storageRoots)
    {
        var status = migration.GetProperty("status").GetString()!;
        var shown = await cluster.Json("vm", "show", vm);
        var restartable = true;
        if (!shown.GetProperty("running").GetBoolean())
        {
            var start = await cluster.Lsm("vm", "start", vm);
            restartable = start.ExitCode == 0;
            if (restartable) shown = await cluster.Json("vm", "show", vm);
        }
        var verifyResult = await cluster.Lsm("vm", "verify", vm, "--json");
        long checkedWrites = -1, lost = -1;
        if (verifyResult.ExitCode == 0 || verifyResult.Stdout.TrimStart().StartsWith('{'))
        {
            var verify = JsonDocument.Parse(verifyResult.Stdout).RootElement;
            checkedWrites = verify.TryGetProperty("checked", out var c) ? c.GetInt64() : -1;
            lost = verify.TryGetProperty("lost", out var l) ? l.GetInt64() : -1;
        }
        var disks = shown.GetProperty("disks").EnumerateArray().ToList();
        var chains = disks.SelectMany(d => d.GetProperty("chain").EnumerateArray()).Select(l => l.GetProperty("volume").GetString()!).ToHashSet();
        await DeletedImageFolders.AwaitUnlinkedAsync(TimeSpan.FromSeconds(30), storageRoots); // a folder still there then is a leftover
        var (volumes, illegal) = ScanDomains(storageRoots);
        var leftovers = volumes.Where(v => !chains.Contains(v)).ToList();
        var runningOn = string.Join(",", disks.Select(d => d.TryGetProperty("domain", out var dom) ? dom.GetString() : "?").Distinct());
        return new FaultOutcome(status, checkedWrites, lost, leftovers, illegal, runningOn, restartable, migration, verifyResult.ToString());
    }

    /// <summary>Every volume (its .meta) under the roots, and how many are ILLEGAL.</summary>
    public static (List<string> Volumes, int Illegal) ScanDomains(params string[] storageRoots)
    {
        var volumes = new List<string>();
        var illegal = 0;
        foreach (var root in storageRoots.Where(Directory.Exists))
        foreach (var meta in Directory.EnumerateFiles(root, "*.meta", SearchOption.AllDirectories))
        {
            volumes.Add(Path.GetFileNameWithoutExtension(meta));
            if (File.ReadLines(meta).Any(line => line.Trim() == "LEGALITY=ILLEGAL")) illegal++;
        }
        return (volumes, illegal);
    }
}
