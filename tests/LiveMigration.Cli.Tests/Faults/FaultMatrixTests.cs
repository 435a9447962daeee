using System.Diagnostics;

namespace LiveMigration.Cli.Tests.Faults;

/// <summary>
/// The quick subset of the fault matrix (issue "The fault matrix"): real processes started by <c>lsm local up</c>
/// with a crash point (<c>LSM_FAULT_PLAN</c>), a writing guest, the migration run to its end the way the README tells
/// an operator (restart what died with <c>lsm local up</c>, abandon a suspended migration), then DESIGN §7 checked
/// from the outside: no durable write lost, the VM runs (or starts) on exactly one complete LEGAL chain, no ILLEGAL
/// or stray volume on any domain. Each case adds a line to <c>var/faults/report.json</c> (<see cref="FaultReport"/>).
/// </summary>
[Collection(LocalClusters.Name)]
public sealed class FaultMatrixTests : IAsyncLifetime
{
    private readonly LocalClusterSession _cluster = new();

    public Task InitializeAsync() => Task.CompletedTask;
    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    /// <summary>Five cases in the quick set (CI), one per kind of crash; <c>LSM_FAULTS_FULL=1</c> (<c>./run.sh faults</c>) adds three more.</summary>
    public static TheoryData<string, string, string, string> Cases
    {
        get
        {
            var data = new TheoryData<string, string, string, string>();
            foreach (var (strategy, process, action, point, quick) in AllCases.Where(c => c.Quick || FullFaultMatrixTests.FullMode))
                data.Add(strategy, process, action, point);
            return data;
        }
    }

    private static readonly (string Strategy, string Process, string Action, string Point, bool Quick)[] AllCases =
    [
        ("pre-copy", "host-1", "kill-self", "Pivot/host-done", true),
        ("pre-copy", "coordinator", "kill-self", "SyncInternalVolumes/outcome-received", true),
        ("pre-copy", "coordinator", "kill-self", "Pivot/before-send", false),
        ("pre-copy", "host-1", "kill-self", "DeleteSourceImage/host-received", false),
        ("post-copy", "host-1", "kill-qemu", "LiveSnapshotToDestination/host-done", true),
        ("post-copy", "host-1", "kill-self", "LiveSnapshotToDestination/host-done", false),
        ("post-copy", "coordinator", "kill-self", "SwitchBackingChain/outcome-received", true),
        ("pre-copy", "host-1", "kill-qemu", "Pivot/host-received", true),
    ];

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
        var storage = await FaultCheck.CreateDomainsAndVmAsync(_cluster, "host-1");
        await _cluster.Ok("vm", "io", "vm1", "--rate", "4MiB/s", "--seconds", "4");
        var started = await _cluster.Json("migrate", "vm1", "--to", "sdB", "--strategy", strategy);
        var id = started.GetProperty("id").GetString()!;

        var final = await FaultCheck.RunToEndAsync(_cluster, id);
        var outcome = await FaultCheck.CheckAsync(_cluster, "vm1", final, storage);
        await FaultReport.AppendAsync(outcome.ToReportLine(strategy, "qmp", $"{process}:{action}", point, clock.Elapsed));
        outcome.AssertClean($"{process}:{action}@{point}", () => _cluster.LogTails());
        if (process == "host-1" && action == "kill-self")
        {
            // host-1 ran the SPM: started again on this machine, it proved its crashed predecessor's process gone and took the
            // lease back at once, instead of watching the record for the lease's period (PoolLease, HolderProcess).
            var state = (await LiveMigration.Cli.Local.LocalClusterState.ReadAsync(_cluster.DataDirectory))!;
            var log = await File.ReadAllTextAsync(state.Nodes.Single(n => n.Name == "host-1").LogFile);
            Assert.Contains("its holder's process on this machine is gone", log);
        }
    }
}
