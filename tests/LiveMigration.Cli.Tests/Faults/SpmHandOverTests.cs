using System.Diagnostics;
using LiveMigration.Cli.Local;
using LiveMigration.HostNode.Processes;
using LiveMigration.HostNode.Spm;
using LiveMigration.Shared.Processes;
using Xunit.Abstractions;

namespace LiveMigration.Cli.Tests.Faults;

/// <summary>
/// The SPM handed over gracefully while it copies (DESIGN §7 invariant 6, §7a): its HostNode is stopped with SIGTERM, as
/// an operator's maintenance or a rolling restart does, while its <c>qemu-img convert</c> of an internal layer runs under
/// a speed limit. The SPM singleton moves to the other SPM-capable host at once (no removal margin), so the lease alone
/// must keep the two apart: it may not be freed or taken while the old SPM's copy still runs. Watched from outside every
/// few milliseconds: the lease record and the copy's process. The migration then retries the copy at the new SPM and
/// completes; the outside check of §7 holds.
/// </summary>
[Collection(LocalClusters.Name)]
public sealed class SpmHandOverTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly LocalClusterSession _cluster = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    [Fact]
    public async Task An_SPM_stopped_while_it_copies_gives_its_lease_up_only_after_its_copy_ended_and_the_next_SPM_completes_the_move()
    {
        var clock = Stopwatch.StartNew();
        _cluster.UpArguments = ["--spm-hosts", "2"];
        await _cluster.UpAsync();
        var storage = await FaultCheck.CreateDomainsAndVmAsync(_cluster, "host-2");
        // Data in a layer the SPM copies: written, then made internal by a live snapshot.
        await _cluster.Ok("vm", "io", "vm1", "--rate", "8MiB/s", "--seconds", "2");
        await Task.Delay(TimeSpan.FromSeconds(3));
        await _cluster.Ok("vm", "snapshot", "vm1");
        await _cluster.Ok("vm", "io", "vm1", "--rate", "1MiB/s", "--seconds", "20");
        await SpmProbe.WaitAsync(_cluster, "host-1 running the SPM", async () => await SpmProbe.HostAsync(_cluster) == "host-1", TimeSpan.FromSeconds(30));
        var state = (await LocalClusterState.ReadAsync(_cluster.DataDirectory))!;
        var spmNode = state.Nodes.Single(n => n.Name == "host-1");
        var successor = state.Nodes.Single(n => n.Name == "host-2");
        var leasePath = Path.Combine(state.DomainRoot, "spm.lease");

        // Slow enough that the internal layer's copy is still running when its SPM is stopped.
        var started = await _cluster.Json("migrate", "vm1", "--to", "sdB", "--strategy", "pre-copy", "--bandwidth", "1MiB/s");
        var id = started.GetProperty("id").GetString()!;
        ProcStat? copy = null;
        await SpmProbe.WaitAsync(_cluster, "the SPM's qemu-img convert of an internal layer", () =>
        {
            copy = OrphanCopies.CopiesUnder([storage]).Select(c => c.Process).FirstOrDefault();
            return Task.FromResult(copy is not null);
        }, TimeSpan.FromMinutes(1));
        var held = await SpmProbe.ReadLeaseAsync(leasePath);
        Assert.EndsWith($":{spmNode.Port}", held.Holder);

        Assert.True(ProcessTable.Signal(spmNode.Pid, ProcessTable.SigTerm));
        // Until the lease record is no longer host-1's, the copy must have ended whenever the record changes.
        var watch = Stopwatch.StartNew();
        TimeSpan? copyEnded = null;
        LeaseRecord moved;
        while (true)
        {
            var copyAlive = ProcStat.Read(copy!.Pid) is { IsZombie: false } now && now.StartTicks == copy.StartTicks;
            if (!copyAlive) copyEnded ??= watch.Elapsed;
            var lease = await SpmProbe.ReadLeaseAsync(leasePath);
            if ((lease.Holder, lease.Generation) != (held.Holder, held.Generation))
            {
                Assert.False(copyAlive, $"the lease became '{lease.Holder}' generation {lease.Generation} while the old SPM's copy (pid {copy.Pid}) still ran");
                moved = lease;
                break;
            }
            if (watch.Elapsed > TimeSpan.FromMinutes(1))
                throw new Xunit.Sdk.XunitException($"the lease stayed host-1's for a minute after its SIGTERM\n{_cluster.LogTails()}");
            await Task.Delay(5);
        }
        output.WriteLine($"copy ended {copyEnded?.TotalMilliseconds:0} ms after the SIGTERM; lease {(moved.IsFree ? "freed" : $"taken by {moved.Holder}")} at {watch.Elapsed.TotalMilliseconds:0} ms");

        await SpmProbe.WaitAsync(_cluster, "host-2 holding the SPM lease and running the SPM", async () =>
        {
            var lease = await SpmProbe.ReadLeaseAsync(leasePath);
            return lease.Generation > held.Generation && lease.Holder.EndsWith($":{successor.Port}", StringComparison.Ordinal)
                   && await SpmProbe.HostAsync(_cluster) == "host-2";
        }, TimeSpan.FromMinutes(1));
        await SpmProbe.WaitAsync(_cluster, "host-1 to exit", () => Task.FromResult(!ProcessTable.IsAlive(spmNode.Pid, spmNode.StartTime)), TimeSpan.FromMinutes(1));
        var oldLog = await File.ReadAllTextAsync(spmNode.LogFile);
        output.WriteLine(string.Join('\n', oldLog.Split('\n').Where(l => l.Contains("ease") || l.Contains("SPM stopped"))));
        // The path this test is about: the release waited for the copy, then freed the record (not a taker proving host-1 gone).
        Assert.Contains("storage change(s) it fenced that are under way ended", oldLog);
        Assert.Contains("Gave up the SPM lease", oldLog);

        await _cluster.Ok("migration", "set-speed", id, "0"); // the rest at full speed
        var final = await FaultCheck.RunToEndAsync(_cluster, id);
        var outcome = await FaultCheck.CheckAsync(_cluster, "vm1", final, storage);
        await FaultReport.AppendAsync(outcome.ToReportLine("pre-copy", "qmp", "spm:sigterm", "SyncInternalVolumes/copying", clock.Elapsed));
        outcome.AssertClean("spm:sigterm@SyncInternalVolumes", () => _cluster.LogTails());
        Assert.True(final.GetProperty("status").GetString() == "completed", $"the migration goes on at the new SPM to its end\n{final}");
    }
}
