using System.Diagnostics;
using LiveMigration.Cli.Local;
using LiveMigration.Shared.Processes;
using Xunit.Abstractions;

namespace LiveMigration.Cli.Tests.Faults;

/// <summary>
/// The classic stale-SPM case of the fault matrix (issue "The fault matrix", DESIGN §7 invariant 6 and §7a): the SPM's
/// HostNode freezes (SIGSTOP) with a step in hand, past failure detection and the split brain resolver's decision;
/// the other SPM-capable host takes the pool's lease over and the migration goes on there; then the frozen one thaws
/// (SIGCONT) with its stale step. It must change nothing (refused FENCED by its lost lease), leave the cluster, and be
/// started again with <c>lsm local up</c> as an operator would; the outside check of §7 then holds.
/// The VM runs on host-2, so only the SPM freezes, not the VM's own host.
/// </summary>
[Collection(LocalClusters.Name)]
public sealed class FrozenSpmTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly LocalClusterSession _cluster = new();
    private readonly List<int> _frozen = [];

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        // Whatever happened, nothing stays frozen: a stopped process would outlive the test (down's SIGTERM waits on it).
        foreach (var pid in _frozen) ProcessTable.Signal(pid, SigCont);
        await _cluster.DisposeAsync();
    }

    private const int SigCont = 18; // Linux

    /// <summary>The quick set (CI) freezes the SPM at the copy; <c>LSM_FAULTS_FULL=1</c> (<c>./run.sh faults</c>) at both points.</summary>
    public static TheoryData<string> Points => FullFaultMatrixTests.FullMode ? new(AllPoints) : new(AllPoints[0]);

    private static readonly string[] AllPoints =
    [
        // the SPM holds the copy of the internal layers: the new SPM copies them while the stale one wakes up to do it too
        "SyncInternalVolumes/host-received",
        // after the pivot: the stale SPM wakes up to delete the source the new one deletes
        "DeleteSourceImage/host-received",
    ];

    [Theory]
    [MemberData(nameof(Points))]
    public async Task A_frozen_SPM_is_taken_over_and_when_thawed_changes_nothing_and_leaves(string point)
    {
        var clock = Stopwatch.StartNew();
        _cluster.Environment = new Dictionary<string, string>
        {
            ["LSM_FAULT_PLAN"] = $"host-1:stop-self@{point}",
            ["LSM_ALLOW_FAULTS"] = "1",
        };
        _cluster.UpArguments = ["--spm-hosts", "2"];
        await _cluster.UpAsync();
        var storage = await FaultCheck.CreateDomainsAndVmAsync(_cluster, "host-2");
        await _cluster.Ok("vm", "io", "vm1", "--rate", "4MiB/s", "--seconds", "4");
        // lsm local up starts host-1 first and Up before host-2: the oldest SPM-capable member, so the SPM.
        await SpmProbe.WaitAsync(_cluster, "host-1 running the SPM", async () => await SpmProbe.HostAsync(_cluster) == "host-1", TimeSpan.FromSeconds(30));
        var state = (await LocalClusterState.ReadAsync(_cluster.DataDirectory))!;
        var spmNode = state.Nodes.Single(n => n.Name == "host-1");
        var successor = state.Nodes.Single(n => n.Name == "host-2");
        var leasePath = Path.Combine(state.DomainRoot, "spm.lease");
        var firstGeneration = (await SpmProbe.ReadLeaseAsync(leasePath)).Generation;

        var started = await _cluster.Json("migrate", "vm1", "--to", "sdB", "--strategy", "pre-copy");
        var id = started.GetProperty("id").GetString()!;
        _frozen.Add(spmNode.Pid);
        await SpmProbe.WaitAsync(_cluster, $"host-1 (pid {spmNode.Pid}) frozen at {point}", () => Task.FromResult(IsStopped(spmNode.Pid)), TimeSpan.FromMinutes(2));

        // Past failure detection and the split brain resolver: host-2 holds the lease (a new generation) and runs the SPM.
        await SpmProbe.WaitAsync(_cluster, "host-2 holding the SPM lease and running the SPM", async () =>
        {
            var lease = await SpmProbe.ReadLeaseAsync(leasePath);
            return lease.Generation > firstGeneration && lease.Holder.EndsWith($":{successor.Port}", StringComparison.Ordinal)
                   && await SpmProbe.HostAsync(_cluster) == "host-2";
        }, TimeSpan.FromMinutes(2));
        var taken = await SpmProbe.ReadLeaseAsync(leasePath);
        Assert.True(IsStopped(spmNode.Pid), "host-1 must still be frozen when host-2 takes over");

        // The frozen SPM wakes up with its stale step while the migration goes on at the new SPM.
        ProcessTable.Signal(spmNode.Pid, SigCont);
        _frozen.Remove(spmNode.Pid);
        // It was downed: it leaves (its process ends), and is started again below as an operator would.
        await SpmProbe.WaitAsync(_cluster, "the thawed host-1 to leave and exit", () => Task.FromResult(!ProcessTable.IsAlive(spmNode.Pid, spmNode.StartTime)),
            TimeSpan.FromMinutes(1));
        var staleLog = await File.ReadAllTextAsync(spmNode.LogFile);
        var after = await SpmProbe.ReadLeaseAsync(leasePath);
        Assert.Equal((taken.Holder, taken.Generation), (after.Holder, after.Generation)); // the stale holder did not take the lease back

        var final = await FaultCheck.RunToEndAsync(_cluster, id);
        var outcome = await FaultCheck.CheckAsync(_cluster, "vm1", final, storage);
        await FaultReport.AppendAsync(outcome.ToReportLine("pre-copy", "qmp", "spm:sigstop/sigcont", point, clock.Elapsed));
        outcome.AssertClean($"spm:sigstop/sigcont@{point}", () => _cluster.LogTails());
        Assert.True(final.GetProperty("status").GetString() == "completed", $"the migration goes on at the new SPM to its end\n{final}");
        // Its stale step, if it got to it before leaving, was refused by the lease rather than run.
        var frozenAt = staleLog.IndexOf("StopSelf", StringComparison.Ordinal);
        Assert.True(frozenAt >= 0, $"host-1's log does not say where it froze\n{staleLog}");
        var afterThaw = staleLog[frozenAt..];
        output.WriteLine($"host-1's SPM and lease lines:\n{string.Join('\n', staleLog.Split('\n').Where(l => l.Contains("/user/spm") || l.Contains("ease") || l.Contains("StopSelf") || l.Contains("FENCED")))}");
        // Woken with the step in hand, it checks the lease before touching storage: refused FENCED, not done.
        Assert.Contains("FENCED", afterThaw);
        Assert.DoesNotMatch($@"/{point.Split('/')[0]}:\S+ succeeded", afterThaw);
    }

    /// <summary>State T in /proc/PID/stat: stopped by a signal.</summary>
    private static bool IsStopped(int pid) => ProcStat.Read(pid)?.State == 'T';
}
