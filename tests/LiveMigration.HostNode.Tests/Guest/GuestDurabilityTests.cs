using LiveMigration.HostNode.Guest;
using LiveMigration.HostNode.Management;
using LiveMigration.Shared.Protocol;
using LiveMigration.HostNode.Tests.Hypervisor.Qmp;
using LiveMigration.Shared.Model;
using Xunit.Abstractions;
using static LiveMigration.HostNode.Tests.Hypervisor.Qmp.QemuTestBed;

namespace LiveMigration.HostNode.Tests.Guest;

/// <summary>
/// What "acknowledged" means when QEMU dies: the guest writes through a real VM's NBD export (qcow2 leaf over a raw base),
/// QEMU is SIGKILLed mid-I/O, and the verifier reads the files. qcow2 keeps new cluster allocations in memory until a
/// FLUSH, so a write acknowledged but never flushed may vanish with the process; one a completed FLUSH (or FUA) covered
/// must not.
/// </summary>
public sealed class GuestDurabilityTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const long Capacity = 64 * MiB;
    // Past the chain's own test patterns, on the sparse (zero) part of the raw base.
    private const long RegionOffset = 16 * MiB;
    // Sequential writes never wrap here in the test's few seconds, so writes after the last flush land in new clusters:
    // exactly the ones a kill can take back.
    private const long RegionLength = 48 * MiB;

    private readonly QemuTestBed _bed = new();

    public Task InitializeAsync() => Task.CompletedTask;
    public async Task DisposeAsync() => await _bed.DisposeAsync();

    private sealed record Outcome(GuestWorkloadStats Stats, WriteLedger Ledger, VerificationReport Report, int NotDurableBlocks);

    /// <summary>Runs the guest until <paramref name="killWhen"/> holds, SIGKILLs QEMU, and verifies the leaf offline.</summary>
    private async Task<Outcome> WriteThenKillAsync(TimeSpan flushInterval, bool fua, Func<GuestWorkload, bool> killWhen)
    {
        var chain = await _bed.CreateChainAsync(2, Capacity);
        var hypervisor = _bed.NewHypervisor();
        var vm = await hypervisor.StartVmAsync(new VmSpec(VmId.New(), "vm-" + Guid.NewGuid().ToString("N")[..6], [chain]));
        _bed.Track(vm);
        var drive = vm.Drive(chain.Image);
        var ledgerPath = Path.Combine(_bed.Root, "guest.ledger");

        var workload = new GuestWorkload(new GuestWorkloadOptions(drive.GuestSocket, drive.ExportName, chain.Image,
            RegionOffset, RegionLength, ledgerPath, RateBytesPerSecond: 4 * MiB, ForceUnitAccess: fua,
            RequestTimeout: TimeSpan.FromSeconds(10), FlushInterval: flushInterval));
        GuestWorkloadStats stats;
        await using (workload)
        {
            await workload.StartAsync();
            var deadline = DateTime.UtcNow.AddSeconds(30);
            while (!killWhen(workload) && workload.Stats.Running && DateTime.UtcNow < deadline)
                await Task.Delay(2);
            Assert.True(workload.Stats.Running, $"the guest stopped before the kill: {workload.Stats.LastError}");
            Assert.True(killWhen(workload), $"the kill condition was not met within 30 s: {workload.Stats}");

            await KillAsync(vm.Pid!.Value);
            var stopped = await Task.WhenAny(workload.Completion, Task.Delay(TimeSpan.FromSeconds(15)));
            Assert.Same(workload.Completion, stopped);
            stats = await workload.StopAsync();
        }
        Assert.Equal(1, stats.Errors); // the connection died under it, and the stop could not flush
        Assert.Contains(drive.GuestSocket, stats.LastError);

        // Another process would read the ledger from its file: do the same.
        var ledger = WriteLedger.Load(ledgerPath);
        Assert.Equal(workload.Ledger.DurableWrites, ledger.DurableWrites);
        Assert.Equal(workload.Ledger.AcknowledgedWrites, ledger.AcknowledgedWrites);
        var notDurableBlocks = ledger.Snapshot().Count(b => b.Acknowledged is { } a && a != b.Durable);
        var report = await GuestVerifier.VerifyImageAsync(chain.Layers[^1].Path, chain.Layers[^1].Format, ledger);
        output.WriteLine($"{(fua ? "FUA" : $"flush every {flushInterval.TotalMilliseconds:0} ms")}: {stats.Writes} writes acknowledged, " +
                         $"{ledger.DurableWrites} durable after {stats.Flushes} flushes (longest {stats.MaxFlushLatency.TotalMilliseconds:0.0} ms), " +
                         $"{ledger.NotDurableCount} acknowledged not durable on {notDurableBlocks} blocks, {ledger.UnacknowledgedCount} unacknowledged");
        output.WriteLine($"after SIGKILL: {report.BlocksChecked} blocks checked, {report.DurableBlocks} durable, " +
                         $"{report.Lost.Count} lost, {report.InDoubt.Count} in doubt");
        foreach (var m in report.Mismatches.Take(3)) output.WriteLine($"  {m}");
        return new Outcome(stats, ledger, report, notDurableBlocks);
    }

    [Fact]
    public async Task Flushing_every_100ms_no_durable_write_is_lost_to_a_SIGKILL_and_the_unflushed_ones_are_in_doubt()
    {
        // Killed while at least 30 acknowledged writes wait for the next flush (the 100 ms window holds ~100 at 4 MiB/s).
        var o = await WriteThenKillAsync(TimeSpan.FromMilliseconds(100), fua: false,
            w => w.Stats.Flushes >= 5 && w.Ledger.DurableWrites >= 200 && w.Ledger.NotDurableCount >= 30);

        Assert.True(o.Stats.Flushes >= 5, $"{o.Stats.Flushes} flushes");
        Assert.True(o.Ledger.DurableWrites >= 200, $"only {o.Ledger.DurableWrites} durable writes");
        Assert.True(o.Ledger.NotDurableCount >= 30, $"only {o.Ledger.NotDurableCount} writes not durable at the kill");
        Assert.Equal(o.Ledger.AcknowledgedWrites, o.Ledger.DurableWrites + o.Ledger.NotDurableCount);
        Assert.Equal(o.Ledger.BlockCount, o.Report.BlocksChecked);
        Assert.Equal(o.Ledger.DurableWrites, o.Report.DurableBlocks); // sequential, never wrapped: one write per block

        Assert.True(o.Report.NoDurableLoss, $"durable writes lost: {string.Join("; ", o.Report.Lost.Take(5))}");
        Assert.Empty(o.Report.Lost);
        // The unflushed writes in clusters QEMU allocated after the last flush went with it: in doubt, and only those.
        Assert.InRange(o.Report.InDoubt.Count, 1, o.NotDurableBlocks);
        Assert.All(o.Report.InDoubt, m =>
        {
            var block = o.Ledger.Find(m.Offset)!;
            Assert.Null(block.Durable);
            Assert.NotNull(block.Acknowledged);
        });
    }

    [Fact]
    public async Task With_fua_every_acknowledged_write_survives_a_SIGKILL()
    {
        var o = await WriteThenKillAsync(TimeSpan.Zero, fua: true, w => w.Stats.Writes >= 300);

        Assert.True(o.Ledger.AcknowledgedWrites >= 300, $"{o.Ledger.AcknowledgedWrites} writes");
        Assert.Equal(o.Ledger.AcknowledgedWrites, o.Ledger.DurableWrites);
        Assert.Equal(0, o.Ledger.NotDurableCount);
        Assert.Equal(0, o.Stats.Flushes); // FUA needs none
        Assert.Equal(o.Ledger.DurableWrites, o.Report.DurableBlocks);
        Assert.Empty(o.Report.Lost);
        Assert.Empty(o.Report.InDoubt);
        Assert.True(o.Report.Ok, o.Report.ToString());
    }

    [Fact]
    public async Task Never_flushing_a_SIGKILL_takes_back_acknowledged_writes_which_are_in_doubt_not_lost()
    {
        // The control: what `lsm vm verify` used to call data loss.
        var o = await WriteThenKillAsync(TimeSpan.Zero, fua: false, w => w.Stats.Writes >= 300);

        Assert.Equal(0, o.Stats.Flushes);
        Assert.Equal(0, o.Ledger.DurableWrites);
        Assert.Equal(0, o.Report.DurableBlocks);
        Assert.Empty(o.Report.Lost);
        Assert.True(o.Report.NoDurableLoss);
        // qcow2 never wrote its new L2 entries: nearly every acknowledged write is gone
        Assert.True(o.Report.InDoubt.Count >= o.NotDurableBlocks - 16,
            $"{o.Report.InDoubt.Count} in doubt of {o.NotDurableBlocks} unflushed blocks");
        Assert.False(o.Report.Ok);
    }

    [Fact]
    public async Task The_hosts_guest_io_passes_its_flush_interval_down_and_after_a_SIGKILL_nothing_durable_is_lost()
    {
        // What `lsm vm io VM --rate 4MiB/s --flush-interval 100ms` runs on the host, then QEMU dies under it.
        var chain = await _bed.CreateChainAsync(2, Capacity);
        var hypervisor = _bed.NewHypervisor();
        var vm = await hypervisor.StartVmAsync(new VmSpec(VmId.New(), "vm-" + Guid.NewGuid().ToString("N")[..6], [chain]));
        _bed.Track(vm);
        var guestIo = new GuestIo(Path.Combine(_bed.Root, "host-data"));

        var bad = await Assert.ThrowsAsync<OperationFailedException>(() => guestIo.StartAsync(vm, 4 * MiB, 0, flushIntervalMs: -1));
        Assert.Equal(ErrorCodes.InvalidArgument, bad.Code);

        var started = await guestIo.StartAsync(vm, 4 * MiB, 0, flushIntervalMs: 100);
        Assert.Equal(100, started.FlushIntervalMs);
        Assert.False(started.Fua);
        GuestIoStatus status;
        var deadline = DateTime.UtcNow.AddSeconds(30);
        do
        {
            await Task.Delay(5);
            status = guestIo.Status(vm.Id);
        } while (status.Running && (status.DurableWrites < 200 || status.LedgerWrites - status.DurableWrites < 20) && DateTime.UtcNow < deadline);
        Assert.True(status.Running, $"the guest stopped before the kill: {status}");
        Assert.True(status.Flushes >= 2, status.ToString());

        await KillAsync(vm.Pid!.Value);
        deadline = DateTime.UtcNow.AddSeconds(15);
        while (guestIo.Status(vm.Id).Running && DateTime.UtcNow < deadline)
            await Task.Delay(20);
        var final = await guestIo.StopAsync(vm.Id);
        Assert.NotNull(final);
        Assert.False(final.Running);
        Assert.Equal(1, final.Errors);
        Assert.True(final.LedgerWrites > final.DurableWrites, final.ToString());

        var ledger = WriteLedger.Load(guestIo.LedgerPath(vm.Id, chain.Image));
        Assert.Equal(final.DurableWrites, ledger.DurableWrites);
        var report = await GuestVerifier.VerifyImageAsync(chain.Layers[^1].Path, chain.Layers[^1].Format, ledger);
        output.WriteLine($"host guest I/O: {final.LedgerWrites} acknowledged, {final.DurableWrites} durable after {final.Flushes} flushes; " +
                         $"after SIGKILL {report.BlocksChecked} blocks checked, {report.DurableBlocks} durable, {report.Lost.Count} lost, {report.InDoubt.Count} in doubt");
        Assert.Empty(report.Lost);
        Assert.True(report.DurableBlocks >= 200, report.ToString());
        Assert.InRange(report.InDoubt.Count, 0, (int)(final.LedgerWrites - final.DurableWrites));
    }
}
