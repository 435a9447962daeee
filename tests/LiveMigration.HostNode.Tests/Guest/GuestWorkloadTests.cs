using LiveMigration.HostNode.Guest;
using LiveMigration.Shared.Model;
using Xunit.Abstractions;

namespace LiveMigration.HostNode.Tests.Guest;

public sealed class GuestWorkloadTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const long Region = 1 << 20;
    private QemuNbdTestBed _bed = null!;

    public async Task InitializeAsync()
    {
        _bed = await QemuNbdTestBed.CreateAsync(size: 8 << 20);
        await _bed.StartNbdAsync();
    }

    public async Task DisposeAsync() => await _bed.DisposeAsync();

    [Fact]
    public async Task A_paced_workload_verifies_through_nbd_and_then_offline_from_the_image()
    {
        const long rate = 1 << 20; // 256 writes a second
        await using var workload = new GuestWorkload(_bed.WorkloadOptions(Region, Region, rate, WritePattern.Random));
        await workload.StartAsync();
        // Until it has written 128 blocks (half a second at its pace; longer on a loaded machine, which is not what is tested).
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (workload.Stats.Writes < 128 && DateTime.UtcNow < deadline) await Task.Delay(20);
        var stats = await workload.StopAsync();
        output.WriteLine($"paced: {stats}");

        Assert.Equal(0, stats.Errors);
        Assert.Null(stats.LastError);
        Assert.False(stats.Running);
        Assert.True(stats.Writes >= 128, $"{stats.Writes} writes in {stats.Elapsed}");
        // Paced: never ahead of 256 writes a second (each write waits until its bytes are due).
        Assert.True(stats.Writes <= 256 * stats.Elapsed.TotalSeconds + 8, $"{stats.Writes} writes in {stats.Elapsed}: faster than 1 MiB/s");
        Assert.Equal(stats.Writes * 4096, stats.Bytes);
        Assert.True(stats.MaxLatency > TimeSpan.Zero);
        Assert.NotNull(stats.MaxLatencyAt);
        Assert.Equal(stats.Writes, workload.Ledger.AcknowledgedWrites);
        Assert.Equal(0, workload.Ledger.UnacknowledgedCount);
        Assert.All(workload.Ledger.Snapshot(), b => Assert.InRange(b.Offset, Region, 2 * Region - 4096));

        var throughNbd = await GuestVerifier.VerifyThroughNbdAsync(_bed.SocketPath, QemuNbdTestBed.ExportName, workload.Ledger);
        output.WriteLine(throughNbd.ToString());
        Assert.True(throughNbd.Ok, throughNbd.ToString());
        Assert.Equal(workload.Ledger.BlockCount, throughNbd.BlocksChecked);
        Assert.True(throughNbd.BlocksChecked > 64);

        await _bed.KillNbdAsync();
        var loaded = WriteLedger.Load(_bed.LedgerPath);
        var offline = await GuestVerifier.VerifyImageAsync(_bed.ImagePath, VolumeFormat.Cow, loaded);
        output.WriteLine(offline.ToString());
        Assert.True(offline.Ok, offline.ToString());
        Assert.Equal(throughNbd.BlocksChecked, offline.BlocksChecked);
    }

    [Fact]
    public async Task A_sequential_run_that_continues_after_the_written_blocks_covers_new_ones_and_wraps_at_the_end()
    {
        // What `lsm vm io` runs: each run goes on where the ledger's blocks end (before, every run rewrote from block 0).
        var options = _bed.WorkloadOptions(0, Region, 256 << 10, WritePattern.Sequential) with { ContinueAfterWritten = true };
        long written = 0;
        for (var run = 0; run < 2; run++)
        {
            await using var workload = new GuestWorkload(options);
            await workload.StartAsync();
            await Task.Delay(TimeSpan.FromMilliseconds(400));
            written += (await workload.StopAsync()).Writes;
            Assert.Equal(written, workload.Ledger.BlockCount); // no block written twice
        }
        Assert.InRange(written, 2, Region / 4096 - 1);

        // past the region's end it wraps to its first block
        await using (var fast = new GuestWorkload(options with { RateBytesPerSecond = 0 }))
        {
            await fast.StartAsync();
            var deadline = DateTime.UtcNow.AddSeconds(20);
            while (fast.Ledger.AcknowledgedWrites < written + Region / 4096 && DateTime.UtcNow < deadline) await Task.Delay(10);
            await fast.StopAsync();
            Assert.Equal(Region / 4096, fast.Ledger.BlockCount);
        }
        var verified = await GuestVerifier.VerifyThroughNbdAsync(_bed.SocketPath, QemuNbdTestBed.ExportName, WriteLedger.Load(_bed.LedgerPath));
        Assert.True(verified.Ok, verified.ToString());
    }

    [Fact]
    public async Task An_unlimited_workload_verifies_while_it_runs_and_reports_its_throughput()
    {
        await using var workload = new GuestWorkload(_bed.WorkloadOptions(0, Region));
        await workload.StartAsync();
        await Task.Delay(TimeSpan.FromMilliseconds(400));

        // the writer keeps overwriting the blocks being read: the verifier must judge by the ledger as it is now
        var whileRunning = await GuestVerifier.VerifyThroughNbdAsync(_bed.SocketPath, QemuNbdTestBed.ExportName, workload.Ledger);
        Assert.True(whileRunning.Ok, whileRunning.ToString());
        Assert.True(workload.Stats.Running);

        // Write until the region was covered at least once (a count, not a speed: the first writes can stall ~1 s here).
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (workload.Stats.Writes <= Region / 4096 && workload.Stats.Running && DateTime.UtcNow < deadline)
            await Task.Delay(20);
        var stats = await workload.StopAsync();
        output.WriteLine($"unlimited, 4 KiB blocks, qemu-nbd: {stats.Writes} writes, {stats.MegabytesPerSecond:0.0} MiB/s, " +
                         $"mean latency {stats.AverageLatency.TotalMicroseconds:0} µs, longest {stats.MaxLatency.TotalMilliseconds:0.0} ms");
        Assert.Equal(0, stats.Errors);
        Assert.True(stats.Writes > Region / 4096, $"only {stats.Writes} writes in {stats.Elapsed}: the region was not even covered once");

        var after = await GuestVerifier.VerifyThroughNbdAsync(_bed.SocketPath, QemuNbdTestBed.ExportName, WriteLedger.Load(_bed.LedgerPath));
        Assert.True(after.Ok, after.ToString());
        Assert.Equal(Region / 4096, after.BlocksChecked);
    }

    [Fact]
    public async Task A_block_overwritten_behind_the_guests_back_is_reported_exactly()
    {
        await using var workload = new GuestWorkload(_bed.WorkloadOptions(0, 64 * 4096));
        await workload.StartAsync();
        while (workload.Stats.Writes < 64 * 3 && workload.Stats.Running)
            await Task.Delay(10);
        var stats = await workload.StopAsync();
        Assert.Equal(0, stats.Errors);
        Assert.True(stats.Writes >= 64 * 3, $"only {stats.Writes} writes");
        await _bed.KillNbdAsync();

        const long garbageOffset = 17 * 4096;
        await _bed.QemuIoAsync($"write -P 0x55 {garbageOffset} 4096");

        var ledger = WriteLedger.Load(_bed.LedgerPath);
        var offline = await GuestVerifier.VerifyImageAsync(_bed.ImagePath, VolumeFormat.Cow, ledger);
        output.WriteLine(offline.ToString());
        Assert.False(offline.Ok);
        Assert.Equal(64, offline.BlocksChecked);
        var mismatch = Assert.Single(offline.Mismatches);
        // the stop flushed every write: the overwritten block had a durable write, so this is a loss, not a doubt
        Assert.Equal(stats.Writes, stats.DurableWrites);
        Assert.Equal(64, offline.DurableBlocks);
        Assert.Same(mismatch, Assert.Single(offline.Lost));
        Assert.Empty(offline.InDoubt);
        Assert.False(offline.NoDurableLoss);
        Assert.Equal(garbageOffset, mismatch.Offset);
        Assert.Null(mismatch.FoundSequence);
        Assert.Contains("5555", mismatch.Found);
        Assert.Contains($"seq {ledger.Find(garbageOffset)!.Acknowledged!.Value.Sequence}", mismatch.Expected);

        await _bed.StartNbdAsync();
        var throughNbd = await GuestVerifier.VerifyThroughNbdAsync(_bed.SocketPath, QemuNbdTestBed.ExportName, ledger);
        Assert.Equal(garbageOffset, Assert.Single(throughNbd.Mismatches).Offset);
    }

    [Fact]
    public async Task Killing_the_server_stops_the_workload_with_an_error_and_the_write_in_doubt_is_tolerated()
    {
        // Allocate the region first: qemu-nbd keeps new qcow2 metadata in memory until a flush, so a SIGKILL
        // would lose freshly allocated clusters that no acknowledged-but-unflushed write can promise. With the
        // clusters allocated, an acknowledged write is in the page cache and survives the server's death.
        await _bed.KillNbdAsync();
        await _bed.QemuIoAsync($"write -P 0 0 {Region}");
        await _bed.StartNbdAsync();

        var workload = new GuestWorkload(_bed.WorkloadOptions(0, Region, pattern: WritePattern.Random));
        await using (workload)
        {
            await workload.StartAsync();
            while (workload.Stats is { Writes: < 200, Running: true })
                await Task.Delay(5);
            Assert.Null(workload.Stats.LastError);
            await _bed.KillNbdAsync();

            var stoppedInTime = await Task.WhenAny(workload.Completion, Task.Delay(TimeSpan.FromSeconds(5)));
            Assert.Same(workload.Completion, stoppedInTime);
            var stats = await workload.StopAsync();
            output.WriteLine($"after kill: {stats}; in doubt: {workload.Ledger.UnacknowledgedCount}");
            Assert.False(stats.Running);
            Assert.Equal(1, stats.Errors);
            Assert.Contains(_bed.SocketPath, stats.LastError);
            Assert.InRange(workload.Ledger.UnacknowledgedCount, 0, 1);
        }

        var ledger = WriteLedger.Load(_bed.LedgerPath);
        Assert.Equal(workload.Ledger.UnacknowledgedCount, ledger.UnacknowledgedCount);
        var offline = await GuestVerifier.VerifyImageAsync(_bed.ImagePath, VolumeFormat.Cow, ledger);
        output.WriteLine(offline.ToString());
        Assert.True(offline.Ok, offline.ToString());
        Assert.Equal(ledger.UnacknowledgedCount, offline.UnacknowledgedBlocks);
    }

    [Fact]
    public async Task The_stall_during_a_window_is_the_longest_request_in_flight_then_and_the_whole_run_agrees_with_the_counters()
    {
        const long rate = 1 << 20; // a 4 KiB write every 4 ms
        await using var workload = new GuestWorkload(_bed.WorkloadOptions(0, Region, rate, WritePattern.Random));
        var started = DateTimeOffset.UtcNow;
        await workload.StartAsync();
        while (workload.Stats is { Writes: < 100, Running: true })
            await Task.Delay(5);

        // the server frozen for 300 ms: the request sent just before or during that cannot be answered before it thaws
        var frozenAt = DateTimeOffset.UtcNow;
        Signal(_bed.NbdPid!.Value, "STOP");
        await Task.Delay(300);
        Signal(_bed.NbdPid!.Value, "CONT");
        var thawedAt = DateTimeOffset.UtcNow;
        var written = workload.Stats.Writes;
        while (workload.Stats is var now && now.Writes < written + 50 && now.Running)
            await Task.Delay(5);
        var stats = await workload.StopAsync();
        Assert.Equal(0, stats.Errors);

        var frozen = workload.StallDuring(frozenAt, thawedAt);
        output.WriteLine($"frozen 300 ms: {frozen}; whole run: {stats}");
        Assert.True(frozen.Requests >= 1);
        var longest = new[] { frozen.LongestWrite, frozen.LongestFlush }.Max()!.Value;
        Assert.True(longest >= TimeSpan.FromMilliseconds(250), $"the longest request across the freeze took {longest.TotalMilliseconds:0.0} ms");

        // every write since the start: the same longest write as the counters, which nothing reset
        var whole = workload.StallDuring(started, DateTimeOffset.UtcNow);
        Assert.Equal(stats.MaxLatency, whole.LongestWrite);
        Assert.Equal(stats.MaxFlushLatency, whole.LongestFlush);
        Assert.Equal(stats.Writes + stats.Flushes, whole.Requests);

        Assert.InRange(frozen.LongestWriteSentAt!.Value, frozenAt.AddSeconds(-1), thawedAt);
        // a window after the stop (a second on, clear of the stop's FLUSH and of the two clocks a request's times come
        // from): nothing was in flight; a window that ends before it starts is refused
        var later = DateTimeOffset.UtcNow.AddSeconds(1);
        Assert.Equal(new GuestStall(null, null, 0), workload.StallDuring(later, later.AddSeconds(1)));
        var refused = Assert.Throws<OperationFailedException>(() => workload.StallDuring(thawedAt, frozenAt));
        Assert.Equal(ErrorCodes.InvalidArgument, refused.Code);
    }

    [Fact]
    public async Task A_window_older_than_the_requests_kept_is_refused_rather_than_answered_from_part_of_it()
    {
        var started = DateTimeOffset.UtcNow;
        await using var workload = new GuestWorkload(_bed.WorkloadOptions(0, Region) with { KeptRequests = 8 });
        await workload.StartAsync();
        while (workload.Stats is { Writes: < 50, Running: true })
            await Task.Delay(5);
        var stats = await workload.StopAsync();
        Assert.Equal(0, stats.Errors);

        var refused = Assert.Throws<OperationFailedException>(() => workload.StallDuring(started, DateTimeOffset.UtcNow));
        Assert.Equal(ErrorCodes.Conflict, refused.Code);
        Assert.Contains("keeps its last 8 requests", refused.Message);
        // a window within what is kept is answered: a second after the stop, when nothing was in flight (a window that
        // began right at the stop could still hold its FLUSH)
        var later = DateTimeOffset.UtcNow.AddSeconds(1);
        Assert.Equal(0, workload.StallDuring(later, later.AddSeconds(1)).Requests);
        Assert.Throws<OperationFailedException>(() => new GuestWorkload(_bed.WorkloadOptions(0, Region) with { KeptRequests = 0 }));
    }

    private static void Signal(int pid, string signal)
    {
        using var kill = System.Diagnostics.Process.Start("kill", [$"-{signal}", pid.ToString()]);
        kill.WaitForExit();
        Assert.Equal(0, kill.ExitCode);
    }

    [Fact]
    public async Task A_second_run_on_the_same_ledger_counts_only_its_own_durable_writes()
    {
        long firstWrites;
        await using (var first = new GuestWorkload(_bed.WorkloadOptions(0, Region)))
        {
            await first.StartAsync();
            while (first.Stats is { Writes: < 100, Running: true })
                await Task.Delay(5);
            var stats = await first.StopAsync();
            Assert.Equal(0, stats.Errors);
            Assert.Equal(stats.Writes, stats.DurableWrites); // the stop's flush covers the rest
            firstWrites = stats.Writes;
        }
        await using var second = new GuestWorkload(_bed.WorkloadOptions(0, Region));
        await second.StartAsync();
        while (second.Stats is { Writes: < 50, Running: true })
            await Task.Delay(5);
        var again = await second.StopAsync();
        output.WriteLine($"first run {firstWrites} writes, second {again.Writes} writes, {again.DurableWrites} durable, ledger {second.Ledger.DurableWrites} durable");
        Assert.Equal(0, again.Errors);
        Assert.Equal(again.Writes, again.DurableWrites);
        Assert.Equal(firstWrites + again.Writes, second.Ledger.DurableWrites);
    }

    [Fact]
    public async Task A_region_outside_the_disk_is_refused_at_start()
    {
        await using var workload = new GuestWorkload(_bed.WorkloadOptions(7 << 20, 2 << 20));
        var error = await Assert.ThrowsAsync<OperationFailedException>(() => workload.StartAsync());
        Assert.Equal(ErrorCodes.InvalidArgument, error.Code);
        Assert.Contains((8L << 20).ToString(), error.Message);
        Assert.False(File.Exists(_bed.LedgerPath));
    }

    [Fact]
    public void A_misaligned_region_is_refused()
    {
        var error = Assert.Throws<OperationFailedException>(() => new GuestWorkload(_bed.WorkloadOptions(100, Region)));
        Assert.Equal(ErrorCodes.InvalidArgument, error.Code);
        Assert.Contains("100", error.Message);
    }
}
