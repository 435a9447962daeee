using System.Diagnostics;
using Akka.Configuration;
using Akka.Coordination;
using LiveMigration.HostNode.Spm;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Lease;

/// <summary>The SPM lease of DESIGN §7a on a real file, with a short period: one holder, takeover, fencing of a stale holder.</summary>
public sealed class PoolLeaseTests : Akka.TestKit.Xunit2.TestKit
{
    private static readonly TimeSpan Period = TimeSpan.FromMilliseconds(600);
    private static readonly TimeSpan Margin = TimeSpan.FromMilliseconds(200);
    private static readonly string Folder = Path.Combine(Path.GetTempPath(), $"lsm-lease-{Guid.NewGuid():N}");
    private readonly string _path = Path.Combine(Folder, $"{Guid.NewGuid():N}", "spm.lease");

    public PoolLeaseTests() : base(ConfigurationFactory.ParseString($$"""
        lsm.spm-lease {
          lease-class = "LiveMigration.HostNode.Spm.FileLease, LiveMigration.HostNode"
          path = "{{Path.Combine(Folder, "akka", "spm.lease")}}"
          heartbeat-timeout = 600ms
          heartbeat-interval = 200ms
          lease-operation-timeout = 5s
          margin = 200ms
        }
        """)) { }

    private PoolLease Lease(string holder) => new(_path, holder, Period, Margin);
    private PoolLease Lease(string holder, TimeSpan period) => new(_path, holder, period, Margin);

    [Fact]
    public async Task One_holder_at_a_time_and_a_released_lease_is_taken_at_once_with_the_next_generation()
    {
        await using var a = Lease("host-a");
        await using var b = Lease("host-b");

        Assert.True(await a.TryAcquireAsync());
        Assert.Equal(LeaseAttempt.TakenFree, a.LastAttempt);
        Assert.Equal(1, a.Generation);
        Assert.False(await b.TryAcquireAsync());
        // What b saw, not how long it took (a clock bound failed on a loaded CI machine): a's renewals.
        Assert.Equal(LeaseAttempt.RecordChanged, b.LastAttempt);
        await a.CheckAsync();
        Assert.True((await a.ReadAsync()).Renewal > 0);

        await a.ReleaseAsync();
        Assert.True(await b.TryAcquireAsync());
        Assert.Equal(LeaseAttempt.TakenFree, b.LastAttempt); // at once: it never watched out a period
        Assert.Equal(2, b.Generation);
        await ContractAssertFenced(a);
    }

    [Fact]
    public async Task A_holder_that_stops_renewing_is_taken_over_after_the_period_and_then_fenced_although_it_still_believes_it_holds()
    {
        await using var a = Lease("host-a");
        await using var b = Lease("host-b");
        Assert.True(await a.TryAcquireAsync());

        a.StopRenewing(); // paused, partitioned
        var watch = Stopwatch.StartNew();
        Assert.True(await b.TryAcquireAsync());

        Assert.True(watch.Elapsed >= Period + Margin, $"taken over after {watch.Elapsed}, before period + margin");
        Assert.Equal(LeaseAttempt.TakenExpired, b.LastAttempt);
        Assert.Equal(2, b.Generation);
        Assert.True(a.IsHeld); // it has not noticed yet…
        var e = await ContractAssertFenced(a); // …but its next storage change is refused
        Assert.Contains("host-b", e.Message);
        Assert.False(a.IsHeld);
        await b.CheckAsync();
    }

    [Fact]
    public async Task A_taker_that_has_read_the_holders_record_unchanged_for_the_period_already_takes_it_without_watching_again()
    {
        await using var a = Lease("host-a");
        await using var b = Lease("host-b");
        Assert.True(await a.TryAcquireAsync());
        b.StartObserving(); // b's singleton manager made its lease: b reads the record from now on
        await Task.Delay(Period); // a renews meanwhile

        a.StopRenewing(); // a's host dies; the cluster notices later, and only then asks b to take over
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (b.RecordUnchangedFor <= Period + Margin && DateTime.UtcNow < deadline) await Task.Delay(50);
        Assert.True(await b.TryAcquireAsync());
        Assert.Equal(LeaseAttempt.TakenExpiredAsObserved, b.LastAttempt); // counted from its own reads, not from the ask
        Assert.Equal(2, b.Generation);
        await ContractAssertFenced(a);
    }

    [Fact]
    public async Task A_holder_that_sees_another_generation_at_its_renewal_counts_the_lease_lost_at_once()
    {
        await using var a = Lease("host-a");
        var lost = new TaskCompletionSource<Exception?>(TaskCreationOptions.RunContinuationsAsynchronously);
        Assert.True(await a.TryAcquireAsync(why => lost.TrySetResult(why)));

        // Written as a lease holder writes it, atomically (a new file renamed over the old): an in-place write could be read
        // half done by the renewal, an unreadable record (IO_ERROR) rather than another holder's (CI saw it once).
        await System.IO.File.WriteAllTextAsync(_path + ".other", "HOLDER=host-z\nGENERATION=9\nRENEWAL=0\n");
        System.IO.File.Move(_path + ".other", _path, overwrite: true);

        var why = await lost.Task.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(ErrorCodes.Fenced, Assert.IsType<OperationFailedException>(why).Code);
        Assert.False(a.IsHeld);
        Assert.Equal(0, a.Generation);
    }

    [Fact]
    public async Task The_record_names_the_holders_process_while_held_and_not_once_released()
    {
        await using var a = Lease("host-a");
        Assert.True(await a.TryAcquireAsync());
        var held = await a.ReadAsync();
        Assert.Equal(HolderProcess.Current, held.Process);
        Assert.Equal(Environment.ProcessId, held.Process!.Pid);
        Assert.False(held.Process.IsProvablyGone()); // this very process

        await a.ReleaseAsync();
        var released = await a.ReadAsync();
        Assert.True(released.IsFree);
        Assert.Null(released.Process);
    }

    [Fact]
    public async Task A_lease_whose_holders_process_on_this_machine_is_gone_is_taken_at_once()
    {
        using var holder = Sleeper();
        WriteRecord("lsm@127.0.0.1:4061", generation: 4, HolderProcess.Read(holder.Id)!);
        holder.Kill();
        await holder.WaitForExitAsync();

        await using var b = Lease("host-b");
        Assert.True(await b.TryAcquireAsync());
        Assert.Equal(LeaseAttempt.TakenFromGoneHolder, b.LastAttempt); // what it saw: no watch of a period
        Assert.Equal(5, b.Generation);
        Assert.Equal(Environment.ProcessId, (await b.ReadAsync()).Process!.Pid);
    }

    [Fact]
    public async Task A_gone_process_of_a_holder_whose_address_is_not_this_machines_proves_nothing()
    {
        // A machine cloned from this one's memory snapshot has the same boot id and pids; its address tells it apart.
        using var holder = Sleeper();
        WriteRecord("lsm@192.0.2.1:4061", generation: 4, HolderProcess.Read(holder.Id)!);
        holder.Kill();
        await holder.WaitForExitAsync();

        await using var b = Lease("host-b");
        Assert.True(await b.TryAcquireAsync());
        Assert.Equal(LeaseAttempt.TakenExpired, b.LastAttempt);
    }

    [Theory]
    [InlineData("lsm@127.0.0.1:4061", true)]
    [InlineData("lsm@[::1]:4061", true)]
    [InlineData("lsm@localhost:4061", true)]
    [InlineData("lsm@192.0.2.1:4061", false)] // TEST-NET-1: no machine's
    [InlineData("lsm@spm-host.example:4061", false)] // a name proves nothing
    [InlineData("host-a", false)]
    [InlineData("lsm@:4061", false)]
    public void A_holder_is_on_this_machine_only_by_an_address_of_this_machine(string holder, bool onThisMachine) =>
        Assert.Equal(onThisMachine, HolderProcess.NamesThisMachine(holder));

    [Fact]
    public void A_holder_at_one_of_this_machines_own_addresses_is_on_this_machine()
    {
        var addresses = System.Net.NetworkInformation.NetworkInterface.GetAllNetworkInterfaces()
            .SelectMany(n => n.GetIPProperties().UnicastAddresses).Select(u => u.Address)
            .ToList();
        var own = addresses.FirstOrDefault(a => !System.Net.IPAddress.IsLoopback(a)) ?? addresses.First(); // a machine without a network has lo
        var host = own.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{own}]" : own.ToString(); // as Akka writes it
        Assert.True(HolderProcess.NamesThisMachine($"lsm@{host}:4061"));
    }

    [Fact]
    public async Task A_holder_that_is_alive_but_frozen_or_on_another_kernel_is_watched_out_a_period_as_before()
    {
        using var frozen = Sleeper();
        using (var stop = Process.Start("kill", ["-STOP", frozen.Id.ToString()])) // renews nothing, yet alive and may wake up
            await stop.WaitForExitAsync();
        try
        {
            WriteRecord("host-a", generation: 2, HolderProcess.Read(frozen.Id)!);
            await using var b = Lease("host-b");
            Assert.True(await b.TryAcquireAsync());
            Assert.Equal(LeaseAttempt.TakenExpired, b.LastAttempt);
        }
        finally
        {
            frozen.Kill();
        }

        // A pid that does not run here proves nothing about a holder on another machine (another boot id).
        var elsewhere = HolderProcess.Current! with { BootId = Guid.NewGuid().ToString(), Pid = int.MaxValue };
        Assert.False(elsewhere.IsProvablyGone());
        WriteRecord("host-z", generation: 7, elsewhere);
        await using var c = Lease("host-c");
        Assert.True(await c.TryAcquireAsync());
        Assert.Equal(LeaseAttempt.TakenExpired, c.LastAttempt);
        Assert.Equal(8, c.Generation);
    }

    [Fact]
    public void A_pid_now_run_by_a_process_that_started_at_another_time_is_a_gone_holder()
    {
        var self = HolderProcess.Current!;
        Assert.True((self with { StartTicks = self.StartTicks - 1 }).IsProvablyGone());
        Assert.False((self with { Namespaces = "pid:[1]" }).IsProvablyGone()); // another namespace's pid 'self' tells nothing
    }

    [Fact]
    public async Task A_zombie_holder_is_not_proven_gone()
    {
        // sh starts a short sleep in the background, then becomes a long sleep that never reaps it: a zombie for 30 s
        using var parent = Process.Start(new ProcessStartInfo("sh", ["-c", "sleep 0.2 & echo $!; exec sleep 30"])
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
        })!;
        try
        {
            var zombie = int.Parse((await parent.StandardOutput.ReadLineAsync())!.Trim());
            var holder = HolderProcess.Read(zombie)!;
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
            while (!System.IO.File.ReadAllText($"/proc/{zombie}/stat").Contains(") Z ") && DateTime.UtcNow < deadline) await Task.Delay(50);
            Assert.Contains(") Z ", System.IO.File.ReadAllText($"/proc/{zombie}/stat"));
            Assert.False(holder.IsProvablyGone()); // its other threads could still be in a write: not proven
        }
        finally
        {
            parent.Kill();
            await parent.WaitForExitAsync();
        }
    }

    [Fact]
    public async Task A_record_without_the_holders_process_still_reads_and_is_watched_out()
    {
        // written before records named the process
        Directory.CreateDirectory(Path.GetDirectoryName(_path)!);
        await System.IO.File.WriteAllTextAsync(_path, "HOLDER=host-a\nGENERATION=3\nRENEWAL=9\n");
        await using var b = Lease("host-b");
        Assert.Equal(new LeaseRecord("host-a", 3, 9), await b.ReadAsync());
        Assert.True(await b.TryAcquireAsync());
        Assert.Equal(LeaseAttempt.TakenExpired, b.LastAttempt);
    }

    private static Process Sleeper() => Process.Start(new ProcessStartInfo("sleep", "60") { UseShellExecute = false })!;

    /// <summary>A holder's record, written as a holder writes it: atomically, a new file renamed over the old.</summary>
    private void WriteRecord(string holder, long generation, HolderProcess process)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(_path)!);
        System.IO.File.WriteAllText(_path + ".other",
            $"HOLDER={holder}\nGENERATION={generation}\nRENEWAL=1\nBOOT={process.BootId}\nNAMESPACES={process.Namespaces}\n" +
            $"PID={process.Pid}\nPIDSTART={process.StartTicks}\n");
        System.IO.File.Move(_path + ".other", _path, overwrite: true);
    }

    [Fact]
    public async Task A_release_refuses_new_changes_at_once_but_frees_the_record_only_once_the_changes_under_way_ended()
    {
        // A longer period: the taker's reads come a second apart, time enough for the release to end between two.
        await using var a = Lease("host-a", TimeSpan.FromSeconds(3));
        await using var b = Lease("host-b", TimeSpan.FromSeconds(3));
        Assert.True(await a.TryAcquireAsync());
        var copy = await a.BeginChangeAsync(); // a copy whose qemu-img is still being killed
        Assert.Equal(1, a.ChangesInProgress);

        var release = a.ReleaseAsync();
        // Nothing new starts under a lease being given up…
        var refused = await Assert.ThrowsAsync<OperationFailedException>(() => a.BeginChangeAsync());
        Assert.Equal(ErrorCodes.Fenced, refused.Code);
        // …and the change under way keeps it: still a's record, still renewed, so another SPM cannot start beside it.
        var before = await a.ReadAsync();
        Assert.Equal("host-a", before.Holder);
        Assert.False(await b.TryAcquireAsync());
        Assert.Equal(LeaseAttempt.RecordChanged, b.LastAttempt);
        Assert.False(release.IsCompleted);

        // The next taker is watching when the change ends: it takes the lease as soon as it is freed, not a period later.
        var taking = b.TryAcquireAsync();
        copy.Dispose();
        await release;
        Assert.Equal(0, a.ChangesInProgress);
        // Taken by the watching attempt; or, when the release took longer than the watcher's next read (a slow fsync on a
        // loaded machine: it then saw a's last renewal), by the next ask: free either way, no period watched out.
        Assert.True(await taking || await b.TryAcquireAsync());
        Assert.Equal(LeaseAttempt.TakenFree, b.LastAttempt);
        Assert.Equal(2, b.Generation);
        await ContractAssertFenced(a);
    }

    [Fact]
    public async Task A_holder_that_lost_the_lease_does_not_take_it_again_while_a_change_from_its_earlier_hold_still_runs()
    {
        await using var a = Lease("host-a");
        await using var b = Lease("host-b");
        Assert.True(await a.TryAcquireAsync());
        var copy = await a.BeginChangeAsync(); // its SPM is being stopped; the copy not yet killed
        a.StopRenewing(); // paused
        Assert.True(await b.TryAcquireAsync());
        await ContractAssertFenced(a); // a notices: lost
        await b.ReleaseAsync();

        // Free now, but a's earlier change would pass the fence under the new generation: not taken.
        Assert.False(await a.TryAcquireAsync());
        Assert.Equal(LeaseAttempt.EarlierChangesRunning, a.LastAttempt);
        Assert.True((await a.ReadAsync()).IsFree);

        copy.Dispose();
        Assert.True(await a.TryAcquireAsync());
        Assert.Equal(LeaseAttempt.TakenFree, a.LastAttempt);
        Assert.Equal(3, a.Generation);
    }

    [Fact]
    public async Task A_change_refused_by_the_fence_is_not_counted_as_under_way()
    {
        await using var a = Lease("host-a");
        await using var b = Lease("host-b");
        Assert.True(await a.TryAcquireAsync());
        a.StopRenewing(); // paused
        Assert.True(await b.TryAcquireAsync());

        var stale = await Assert.ThrowsAsync<OperationFailedException>(() => a.BeginChangeAsync());
        Assert.Equal(ErrorCodes.Fenced, stale.Code);
        Assert.Equal(0, a.ChangesInProgress);
        await a.ReleaseAsync(); // nothing to wait for, and b's record is left alone
        Assert.Equal("host-b", (await b.ReadAsync()).Holder);
    }

    [Fact]
    public async Task The_file_lease_loads_as_an_Akka_Coordination_lease()
    {
        var lease = LeaseProvider.Get(Sys).GetLease("spm", "lsm.spm-lease", "host-a");
        Assert.IsType<FileLease>(lease);

        Assert.True(await lease.Acquire(_ => { }));
        Assert.True(lease.CheckLease());
        Assert.True(await lease.Release());
        Assert.False(lease.CheckLease());
    }

    private static async Task<OperationFailedException> ContractAssertFenced(PoolLease stale)
    {
        var e = await Assert.ThrowsAsync<OperationFailedException>(() => stale.CheckAsync());
        Assert.Equal(ErrorCodes.Fenced, e.Code);
        return e;
    }

    protected override void Dispose(bool disposing)
    {
        base.Dispose(disposing);
        if (disposing && Directory.Exists(Folder)) Directory.Delete(Folder, recursive: true);
    }
}
