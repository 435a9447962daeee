using Akka.Actor;
using LiveMigration.HostNode.Guest;
using LiveMigration.HostNode.Hsm;
using LiveMigration.HostNode.Management;
using LiveMigration.HostNode.Processes;
using LiveMigration.HostNode.Spm;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Tests.EndToEnd;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;
using Step = LiveMigration.Shared.Migration.MigrationStep;

namespace LiveMigration.HostNode.Tests.Actors;

/// <summary>The two actors over the real adapters: a real QEMU VM's 3-volume chain moves between file domains, pre-copy, while the guest writes.</summary>
public sealed class HostActorsRealTests : Akka.TestKit.Xunit2.TestKit
{
    private const long MiB = HostLayerBed.MiB;

    [Fact]
    public async Task Pre_copy_through_the_SPM_and_HSM_actors_moves_a_running_QEMU_chain_and_loses_no_write()
    {
        await using var bed = await HostLayerBed.StartAsync();
        await bed.StartGuestAsync(1 * MiB);
        await bed.WaitForGuestWritesAsync(20);
        var (spm, hsm, saga) = Actors(bed);
        // Write-blocking: with 4 KiB random guest writes into 64 KiB clusters a limited background mirror may never converge.
        var driver = new StepDriver(bed.Vm, new DiskPlan(bed.Image, bed.A.Id, bed.B.Id, 64 * MiB, VolumeId.New()),
            MigrationStrategy.PreCopy, speed: 16 * MiB, mode: CopyMode.WriteBlocking);
        var patient = TimeSpan.FromSeconds(60);

        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga, timeout: patient);
        await driver.SucceedAsync(hsm, Step.StartReplication, saga, timeout: patient);
        var synced = await driver.SucceedAsync(spm, Step.SyncInternalVolumes, saga, timeout: patient);
        var ready = await driver.SucceedAsync(hsm, Step.WaitMirrorReady, saga, timeout: patient);
        await bed.WaitForGuestWritesAsync(10);
        await driver.SucceedAsync(hsm, Step.Pivot, saga, timeout: patient);
        await driver.SucceedAsync(spm, Step.MarkDestinationLeafLegal, saga, timeout: patient);
        await driver.SucceedAsync(spm, Step.DeleteSourceImage, saga, timeout: patient);

        Assert.True(synced.Outcome.BytesCopied > 0, "the internal layers held data");
        Assert.True(ready.Outcome.BytesCopied > 0, "the mirror copied the leaf");
        await AssertMovedWhollyToBAsync(bed, writesAfter: 20);
    }

    [Fact]
    public async Task A_background_mirror_the_guest_outruns_is_started_again_write_blocking_by_the_HSM_and_the_pivot_loses_no_write()
    {
        await using var bed = await HostLayerBed.StartAsync();
        // Random 4 KiB writes each dirty a 64 KiB cluster: 2 MiB/s of them dirty far more than the mirror's 8 MiB/s copies.
        await bed.StartGuestAsync(2 * MiB);
        await bed.WaitForGuestWritesAsync(20);
        var spm = Sys.ActorOf(SpmActor.Props(bed.Pool));
        var hsm = Sys.ActorOf(HsmActor.Props(bed.Hypervisor, bed.Pool, convergenceWindow: TimeSpan.FromSeconds(3)));
        var saga = CreateTestProbe();
        var driver = new StepDriver(bed.Vm, new DiskPlan(bed.Image, bed.A.Id, bed.B.Id, 64 * MiB, VolumeId.New()),
            MigrationStrategy.PreCopy, speed: 8 * MiB, mode: CopyMode.Background);
        var patient = TimeSpan.FromSeconds(60);

        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga, timeout: patient);
        await driver.SucceedAsync(hsm, Step.StartReplication, saga, timeout: patient);
        await driver.SucceedAsync(spm, Step.SyncInternalVolumes, saga, timeout: patient);
        var ready = await driver.SucceedAsync(hsm, Step.WaitMirrorReady, saga, timeout: patient);

        Assert.Contains("did not converge", ready.Outcome.Note);
        Assert.Contains("started again write-blocking", ready.Outcome.Note);
        var job = await bed.Hypervisor.GetBlockJobAsync(bed.Vm, bed.Image);
        Assert.Equal((BlockJobPhase.Ready, CopyMode.WriteBlocking, 8 * MiB), (job!.Phase, job.Mode, job.SpeedBytesPerSecond));
        // The host restarts (QEMU runs on): its new hypervisor instance reads the mode back from the VM's manifest, so its
        // HSM would not start the job again, and pivots it.
        await bed.Hypervisor.DisposeAsync();
        var adopted = bed.NewHypervisor();
        await adopted.AdoptRunningVmsAsync();
        bed.UseHypervisor(adopted);
        Assert.Equal(CopyMode.WriteBlocking, (await adopted.GetBlockJobAsync(bed.Vm, bed.Image))!.Mode);
        hsm = Sys.ActorOf(HsmActor.Props(adopted, bed.Pool, convergenceWindow: TimeSpan.FromSeconds(3)));

        await driver.SucceedAsync(hsm, Step.Pivot, saga, timeout: patient);
        await driver.SucceedAsync(spm, Step.MarkDestinationLeafLegal, saga, timeout: patient);
        await driver.SucceedAsync(spm, Step.DeleteSourceImage, saga, timeout: patient);
        var drive = await bed.DriveAsync();
        Assert.Equal(await bed.PathsOnAsync(bed.B), drive.OpenChain);
        Assert.All((await bed.B.DescribeImageAsync(bed.Image)).Volumes, v => Assert.Equal(Legality.Legal, v.Legality));

        await bed.AssertGuestLostNothingAsync(drive, writesAfter: 20);
    }

    [Fact]
    public async Task A_limited_mirror_holds_its_rate_within_ten_percent_over_its_copy()
    {
        await using var bed = await HostLayerBed.StartAsync();
        // The guest fills the leaf first (random 4 KiB writes each allocate a 64 KiB cluster: some 32 MiB), then stops, so
        // what the mirror copies is the leaf's data alone, at its limit.
        await bed.StartGuestAsync(8 * MiB);
        await bed.WaitForGuestWritesAsync(4000);
        await bed.Guest.StopAsync();
        const long limit = 4 * MiB;
        var spm = Sys.ActorOf(SpmActor.Props(bed.Pool));
        var hsm = Sys.ActorOf(HsmActor.Props(bed.Hypervisor, bed.Pool));
        var saga = CreateTestProbe();
        var driver = new StepDriver(bed.Vm, new DiskPlan(bed.Image, bed.A.Id, bed.B.Id, 64 * MiB, VolumeId.New()),
            MigrationStrategy.PreCopy, speed: limit, mode: CopyMode.Background);
        var patient = TimeSpan.FromSeconds(60);
        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga, timeout: patient);

        // From the request to READY, by QEMU's own counters read ten times a second. QEMU copies in bursts of up to its
        // buffer (16 MiB) and then waits out what the burst took of the limit, so the rate holds over the copy, not
        // over any tenth of a second.
        var clock = System.Diagnostics.Stopwatch.StartNew();
        await driver.SucceedAsync(hsm, Step.StartReplication, saga, timeout: patient);
        var samples = new List<(double At, long Offset, long Length)>();
        BlockJobInfo? job;
        while ((job = await bed.Hypervisor.GetBlockJobAsync(bed.Vm, bed.Image))!.Phase != BlockJobPhase.Ready)
        {
            Assert.True(clock.Elapsed < patient, $"the mirror was not READY within {patient}: {job}");
            samples.Add((clock.Elapsed.TotalSeconds, job.Offset, job.Length));
            await Task.Delay(100);
        }
        var seconds = clock.Elapsed.TotalSeconds;

        Assert.True(job.Length >= 16 * MiB, $"the leaf held only {job.Length} bytes to mirror");
        var rate = job.Length / seconds;
        Assert.True(rate >= limit * 0.9 && rate <= limit * 1.1, $"the mirror copied {job.Length / 1024} KiB in {seconds:0.00} s: " +
            $"{rate / MiB:0.00} MiB/s at a limit of {limit / MiB} MiB/s (job speed {job.SpeedBytesPerSecond}): " +
            string.Join(", ", samples.Select(s => $"{s.At:0.0}s {s.Offset / 1024}/{s.Length / 1024} KiB")));
        await driver.SucceedAsync(hsm, Step.CancelReplication, saga, timeout: patient);
    }

    [Fact]
    public async Task A_speed_change_reaches_the_SPMs_running_copy_of_the_internal_layers()
    {
        await using var bed = await HostLayerBed.StartAsync();
        var spm = Sys.ActorOf(SpmActor.Props(bed.Pool));
        var saga = CreateTestProbe();
        // 12 MiB of internal layers at 256 KiB/s: about 40 s
        var driver = new StepDriver(bed.Vm, new DiskPlan(bed.Image, bed.A.Id, bed.B.Id, 64 * MiB, VolumeId.New()),
            MigrationStrategy.PreCopy, speed: 256 * 1024);
        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga);

        var watch = System.Diagnostics.Stopwatch.StartNew();
        driver.Send(spm, Step.SyncInternalVolumes, saga);
        // held by its limit: no answer for three seconds, only progress
        var held = DateTime.UtcNow.AddSeconds(3);
        while (DateTime.UtcNow < held)
        {
            if (await saga.ReceiveOneAsync(TimeSpan.FromMilliseconds(200)) is { } early and not OperationProgress)
                Assert.Fail($"the limited copy answered after {watch.Elapsed.TotalSeconds:0.0} s: {early}");
        }
        spm.Tell(new SetStepSpeed(driver.Op(Step.SyncInternalVolumes), 0), saga.Ref);
        var synced = await StepDriver.AnswerAsync(saga, driver.Op(Step.SyncInternalVolumes), timeout: TimeSpan.FromSeconds(60));

        Assert.IsType<OperationSucceeded>(synced);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(20), $"the copy took {watch.Elapsed.TotalSeconds:0.0} s: the new speed did not reach it");
        var internals = (await bed.B.DescribeImageAsync(bed.Image)).Volumes.SkipLast(1).ToList();
        Assert.All(internals, v => Assert.Equal(Legality.Legal, v.Legality));
    }

    [Fact]
    public async Task A_stopped_copy_of_the_internal_layers_answers_STEP_STOPPED_only_once_its_qemu_img_is_gone_and_the_rollback_removes_it()
    {
        await using var bed = await HostLayerBed.StartAsync();
        var spm = Sys.ActorOf(SpmActor.Props(bed.Pool));
        var saga = CreateTestProbe();
        var (driver, sync) = await CopyingSlowlyAsync(bed, spm, saga);

        spm.Tell(new StopStep(sync, "migration cancelled by the test"), saga.Ref);
        var answer = await StepDriver.AnswerAsync(saga, sync, timeout: TimeSpan.FromSeconds(30));
        // read at once: nothing may write the copy after the answer
        var stillCopying = OrphanCopies.CopiesUnder([bed.B.DomainPath]).Select(c => c.Process.Pid).ToList();

        var stopped = Assert.IsType<OperationFailed>(answer);
        Assert.Equal((ErrorCodes.StepStopped, false), (stopped.Code, stopped.Transient));
        Assert.Empty(stillCopying);
        Assert.Contains((await bed.B.DescribeImageAsync(bed.Image)).Volumes, v => v.Legality == Legality.Illegal);
        // the same id again is the same answer, not a new copy
        driver.Send(spm, Step.SyncInternalVolumes, saga);
        Assert.Equal(ErrorCodes.StepStopped, Assert.IsType<OperationFailed>(await StepDriver.AnswerAsync(saga, sync)).Code);
        Assert.Empty(OrphanCopies.CopiesUnder([bed.B.DomainPath]));

        await driver.SucceedAsync(spm, Step.DeleteDestinationImage, saga);
        Assert.DoesNotContain(bed.Image, await bed.B.ListImagesAsync());
        Assert.Contains(bed.Image, await bed.A.ListImagesAsync());
    }

    [Fact]
    public async Task A_stop_that_comes_before_its_step_answers_the_step_STEP_STOPPED_without_copying_and_a_stop_of_another_step_changes_nothing()
    {
        await using var bed = await HostLayerBed.StartAsync();
        var spm = Sys.ActorOf(SpmActor.Props(bed.Pool));
        var saga = CreateTestProbe();
        var driver = new StepDriver(bed.Vm, new DiskPlan(bed.Image, bed.A.Id, bed.B.Id, 64 * MiB, VolumeId.New()), MigrationStrategy.PreCopy);
        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga);

        // e.g. the SPM moved: the saga's stop reaches the new SPM, then its step sent again
        spm.Tell(new StopStep(driver.Op(Step.SyncInternalVolumes, attempt: 2), "migration cancelled by the test"), saga.Ref);
        driver.Send(spm, Step.SyncInternalVolumes, saga, attempt: 2);
        var answer = Assert.IsType<OperationFailed>(await StepDriver.AnswerAsync(saga, driver.Op(Step.SyncInternalVolumes, attempt: 2)));
        Assert.Equal(ErrorCodes.StepStopped, answer.Code);
        Assert.All((await bed.B.DescribeImageAsync(bed.Image)).Volumes, v => Assert.Equal(Legality.Illegal, v.Legality));

        // A stop of a step that is not a copy before the point of no return (a post-copy's copy, a delete) changes nothing.
        spm.Tell(new StopStep(driver.Op(Step.DeleteDestinationImage, attempt: 3), "wrong step"), saga.Ref);
        await driver.SucceedAsync(spm, Step.DeleteDestinationImage, saga, attempt: 3);
        Assert.DoesNotContain(bed.Image, await bed.B.ListImagesAsync());
    }

    [Fact]
    public async Task An_SPM_that_stops_answers_its_copy_FENCED_only_once_its_qemu_img_is_gone()
    {
        await using var bed = await HostLayerBed.StartAsync();
        await using var lease = new PoolLease(Path.Combine(bed.Root, "spm.lease"), "host-a", TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(1));
        Assert.True(await lease.TryAcquireAsync());
        var spm = Sys.ActorOf(SpmActor.Props(new StoragePool([new FencedStorageDomain(bed.A, lease), new FencedStorageDomain(bed.B, lease)]), lease));
        var saga = CreateTestProbe();
        var (driver, sync) = await CopyingSlowlyAsync(bed, spm, saga);

        // as its singleton moving, or a restart by its supervisor (whose new instance would take the step again at once)
        Sys.Stop(spm);
        var answer = await StepDriver.AnswerAsync(saga, sync, timeout: TimeSpan.FromSeconds(30));
        var stillCopying = OrphanCopies.CopiesUnder([bed.B.DomainPath]).Select(c => c.Process.Pid).ToList();

        Assert.Equal(ErrorCodes.Fenced, Assert.IsType<OperationFailed>(answer).Code);
        Assert.Empty(stillCopying);
    }

    /// <summary>
    /// The saga reads where the drive runs again before a paused rollback goes on, and that may come after the rollback's
    /// delete removed the copy: the probe names the leaf by its planned id and still answers (the source), instead of
    /// failing IMAGE_NOT_FOUND until the migration suspends for good.
    /// </summary>
    [Theory]
    [InlineData(MigrationStrategy.PreCopy)]
    [InlineData(MigrationStrategy.PostCopy)]
    public async Task A_switch_probed_after_the_copy_was_deleted_finds_the_drive_on_its_source(MigrationStrategy strategy)
    {
        await using var bed = await HostLayerBed.StartAsync();
        var (spm, hsm, saga) = Actors(bed);
        var sourceLeaf = (await bed.A.DescribeImageAsync(bed.Image)).Leaf.Id;
        var driver = new StepDriver(bed.Vm, new DiskPlan(bed.Image, bed.A.Id, bed.B.Id, 64 * MiB, VolumeId.New(), sourceLeaf), strategy);
        await driver.SucceedAsync(spm, strategy == MigrationStrategy.PreCopy ? Step.CloneImageStructure : Step.CreateVolumeCrossDomain, saga);
        await driver.SucceedAsync(spm, Step.DeleteDestinationImage, saga);
        Assert.DoesNotContain(bed.Image, await bed.B.ListImagesAsync());

        var probed = await driver.SucceedAsync(hsm, Step.ProbeSwitch, saga);

        Assert.Equal(SwitchFinding.OnSource, probed.Outcome.Switch);
        Assert.Equal(await bed.PathsOnAsync(bed.A), (await bed.DriveAsync()).OpenChain);
    }

    /// <summary>
    /// A restarted host finds a QEMU running whose monitor another client holds: it cannot adopt it at start, and until
    /// then every step for that VM failed (VM_NOT_FOUND, or a probe SWITCH_OUTCOME_UNKNOWN) until the host restarted again.
    /// The HSM tries again on its own: once the monitor is free the VM is adopted, and a step sent meanwhile waits for it.
    /// </summary>
    /// <summary>
    /// A post-copy abandoned between its live snapshot and its backing switch leaves the drive writing on a leaf on B over the
    /// older layers on A, with empty twins of them its clone had begun on B. A post-copy planned to make that chain whole
    /// takes over those volumes, confirms the drive on the leaf (no second snapshot), copies the older layers, switches the
    /// backing chain and deletes A's: the chain is whole on B and the guest lost nothing.
    /// </summary>
    [Fact]
    public async Task A_chain_an_abandoned_post_copy_left_over_two_domains_is_made_whole_by_a_post_copy_to_its_leafs_domain()
    {
        await using var bed = await HostLayerBed.StartAsync();
        await bed.StartGuestAsync(1 * MiB);
        await bed.WaitForGuestWritesAsync(20);
        var (spm, hsm, saga) = Actors(bed);
        var patient = TimeSpan.FromSeconds(60);
        var abandoned = await ToBAsync(bed, MigrationStrategy.PostCopy);
        await abandoned.SucceedAsync(spm, Step.CreateVolumeCrossDomain, saga, timeout: patient);
        await abandoned.SucceedAsync(hsm, Step.LiveSnapshotToDestination, saga, timeout: patient);
        await bed.B.CloneImageStructureAsync(bed.A, bed.Image, new VolumeOwner(abandoned.Migration, VolumeOwner.Unfenced)); // its clone, begun
        await bed.WaitForGuestWritesAsync(20);
        var leaf = abandoned.Disk.NewLeaf;
        Assert.Equal(bed.Volumes.Count + 1, (await bed.DriveAsync()).OpenChain.Count);

        var whole = new StepDriver(bed.Vm, new DiskPlan(bed.Image, bed.A.Id, bed.B.Id, 64 * MiB, leaf, MakesWhole: true), MigrationStrategy.PostCopy);
        var adopted = await whole.SucceedAsync(spm, Step.CreateVolumeCrossDomain, saga, timeout: patient);
        Assert.Contains($"taken over from migration {abandoned.Migration}", adopted.Outcome.Detail);
        Assert.All((await bed.B.DescribeImageAsync(bed.Image)).Volumes, v => Assert.Equal(whole.Migration, v.Owner?.Migration));
        // repeated, it finds them taken over already; a late command of the abandoned migration changes nothing any more
        Assert.Contains("taken over already", (await whole.SucceedAsync(spm, Step.CreateVolumeCrossDomain, saga, attempt: 2, timeout: patient)).Outcome.Detail);
        Assert.Equal(ErrorCodes.MigrationEnded,
            Assert.IsType<OperationFailed>(await abandoned.RunAsync(spm, Step.CloneInternalVolumes, saga, timeout: patient)).Code);
        Assert.Equal(ErrorCodes.MigrationEnded,
            Assert.IsType<OperationFailed>(await abandoned.RunAsync(hsm, Step.SwitchBackingChain, saga, timeout: patient)).Code);
        Assert.All((await bed.B.DescribeImageAsync(bed.Image)).Volumes, v => Assert.Equal(whole.Migration, v.Owner?.Migration));
        var confirmed = await whole.SucceedAsync(hsm, Step.LiveSnapshotToDestination, saga, timeout: patient);
        Assert.Contains("already", confirmed.Outcome.Detail);
        Assert.Equal(bed.Volumes.Count + 1, (await bed.DriveAsync()).OpenChain.Count); // no second snapshot
        var copied = await whole.SucceedAsync(spm, Step.CloneInternalVolumes, saga, timeout: patient);
        await bed.WaitForGuestWritesAsync(10);
        await whole.SucceedAsync(hsm, Step.SwitchBackingChain, saga, timeout: patient);
        await whole.SucceedAsync(spm, Step.DeleteSourceImage, saga, timeout: patient);

        Assert.True(copied.Outcome.BytesCopied > 0, "the older layers held data");
        await AssertMovedWhollyToBAsync(bed, writesAfter: 10);
    }

    [Fact]
    public async Task A_move_planned_to_make_a_chain_whole_takes_over_nothing_and_switches_nothing_where_there_is_no_such_chain()
    {
        await using var bed = await HostLayerBed.StartAsync();
        var (spm, hsm, saga) = Actors(bed);
        var leaf = VolumeId.New();
        var whole = new StepDriver(bed.Vm, new DiskPlan(bed.Image, bed.A.Id, bed.B.Id, 64 * MiB, leaf, MakesWhole: true), MigrationStrategy.PostCopy);

        // B holds nothing of the image: no split chain there, nothing made or taken over
        Assert.Equal(ErrorCodes.VolumeNotFound, Assert.IsType<OperationFailed>(await whole.RunAsync(spm, Step.CreateVolumeCrossDomain, saga)).Code);
        Assert.DoesNotContain(bed.Image, await bed.B.ListImagesAsync());

        // A post-copy made its leaf on B and stopped before its snapshot: the drive never wrote there. The leaf is taken over
        // (it is a LEGAL leaf over A's chain), but the confirming snapshot finds the drive elsewhere and switches nothing.
        var stopped = new StepDriver(bed.Vm, whole.Disk with { MakesWhole = false, SourceLeaf = (await bed.A.DescribeImageAsync(bed.Image)).Leaf.Id },
            MigrationStrategy.PostCopy);
        await stopped.SucceedAsync(spm, Step.CreateVolumeCrossDomain, saga);
        await whole.SucceedAsync(spm, Step.CreateVolumeCrossDomain, saga, attempt: 2);
        var before = (await bed.DriveAsync()).OpenChain;
        var refused = Assert.IsType<OperationFailed>(await whole.RunAsync(hsm, Step.LiveSnapshotToDestination, saga));
        Assert.Equal(ErrorCodes.Conflict, refused.Code);
        Assert.Contains("not the split chain", refused.Message);
        Assert.Equal(before, (await bed.DriveAsync()).OpenChain);
    }

    [Fact]
    public async Task A_QEMU_whose_monitor_was_held_at_the_hosts_start_is_adopted_once_it_is_free_and_its_steps_run()
    {
        await using var bed = await HostLayerBed.StartAsync();
        var manifest = Path.Combine(bed.RunDirectory, "vms", $"{bed.Vm}.json");
        var qmpSocket = System.Text.Json.JsonDocument.Parse(await File.ReadAllTextAsync(manifest)).RootElement.GetProperty("QmpSocket").GetString()!;
        await bed.Hypervisor.DisposeAsync(); // the host process restarts; QEMU runs on
        var holder = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        await holder.ConnectAsync(new System.Net.Sockets.UnixDomainSocketEndPoint(qmpSocket));
        var successor = bed.NewHypervisor();
        bed.UseHypervisor(successor);
        var adopted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var hsm = Sys.ActorOf(HsmActor.Props(successor, bed.Pool, adopted: adopted, readoptInterval: TimeSpan.FromSeconds(1)));
        await adopted.Task.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.True(await successor.RunsUnadoptedAsync(bed.Vm), "the held monitor kept the VM from being adopted at start");

        var driver = await ToBAsync(bed, MigrationStrategy.PostCopy);
        var saga = CreateTestProbe();
        // Still held: the step tries the adoption, then fails transiently (the VM runs), not "unknown" or "no such VM".
        var held = Assert.IsType<OperationFailed>(await driver.RunAsync(hsm, Step.ProbeSwitch, saga, timeout: TimeSpan.FromSeconds(60)));
        Assert.True(held.Transient, held.Message);

        holder.Dispose();
        // Freed: adopted by the next attempt (its timer, or a step's); a step racing QEMU's notice of the free monitor
        // is told to try again, as above, so the saga's retries are what a test does here too.
        IHostReply answer = held;
        for (var attempt = 2; answer is OperationFailed { Transient: true } && attempt < 40; attempt++)
        {
            await Task.Delay(500);
            answer = await driver.RunAsync(hsm, Step.ProbeSwitch, saga, attempt, timeout: TimeSpan.FromSeconds(60));
        }

        Assert.Equal(SwitchFinding.OnSource, Assert.IsType<OperationSucceeded>(answer).Outcome.Switch);
        Assert.False(await successor.RunsUnadoptedAsync(bed.Vm));
        Assert.Contains(await successor.ListVmsAsync(), v => v.Id == bed.Vm && v.Running);
    }

    /// <summary>
    /// A late pivot or cancel of an earlier migration of the same disk (its host restarted and forgot answering it) reaches
    /// the HSM while another migration mirrors the disk: it must not complete that mirror (before its internal layers are
    /// copied the VM would read them unfinished) nor end it. Each step acts only on a mirror into its own planned leaf.
    /// </summary>
    [Fact]
    public async Task A_late_pivot_or_cancel_of_another_migration_leaves_the_running_mirror_alone()
    {
        await using var bed = await HostLayerBed.StartAsync();
        var (spm, hsm, saga) = Actors(bed);
        var sourceLeaf = (await bed.A.DescribeImageAsync(bed.Image)).Leaf.Id;
        var now = new StepDriver(bed.Vm, new DiskPlan(bed.Image, bed.A.Id, bed.B.Id, 64 * MiB, VolumeId.New(), sourceLeaf), MigrationStrategy.PreCopy);
        await now.SucceedAsync(spm, Step.CloneImageStructure, saga);
        await now.SucceedAsync(hsm, Step.StartReplication, saga);
        // The earlier migration moved the disk from the same leaf to the same domain (rolled back since): its mirror wrote
        // the very same path, a twin keeping its volume's id; only the leaf's owner tells the two apart. And one that
        // planned another leaf (the disk ran on another chain then).
        var earlier = new StepDriver(bed.Vm, new DiskPlan(bed.Image, bed.A.Id, bed.B.Id, 64 * MiB, VolumeId.New(), sourceLeaf), MigrationStrategy.PreCopy);
        var older = new StepDriver(bed.Vm, new DiskPlan(bed.Image, bed.A.Id, bed.B.Id, 64 * MiB, VolumeId.New(), VolumeId.New()), MigrationStrategy.PreCopy);

        var pivot = Assert.IsType<OperationFailed>(await earlier.RunAsync(hsm, Step.Pivot, saga));
        var cancel = Assert.IsType<OperationFailed>(await earlier.RunAsync(hsm, Step.CancelReplication, saga));
        var olderCancel = Assert.IsType<OperationFailed>(await older.RunAsync(hsm, Step.CancelReplication, saga));

        Assert.Equal(ErrorCodes.Conflict, pivot.Code);
        Assert.Equal(ErrorCodes.NoSuchJob, cancel.Code); // nothing of the earlier migration's to undo
        Assert.Equal(ErrorCodes.NoSuchJob, olderCancel.Code);
        Assert.NotNull(await bed.Hypervisor.GetBlockJobAsync(bed.Vm, bed.Image));
        Assert.Equal(await bed.PathsOnAsync(bed.A), (await bed.DriveAsync()).OpenChain);
        await now.SucceedAsync(spm, Step.SyncInternalVolumes, saga, timeout: TimeSpan.FromSeconds(60));
        await now.SucceedAsync(hsm, Step.WaitMirrorReady, saga, timeout: TimeSpan.FromSeconds(60));
        await now.SucceedAsync(hsm, Step.Pivot, saga, timeout: TimeSpan.FromSeconds(60));
        Assert.Equal(await bed.PathsOnAsync(bed.B), (await bed.DriveAsync()).OpenChain);
    }

    /// <summary>
    /// A rollback's delete may be sent, fail without effect, and the disk then roll forward (the probe after a pause
    /// found the drive switched). A late copy of that delete at an SPM that forgot answering it would remove every volume
    /// the migration made: the disk's whole chain on the destination, once its VM is stopped. The first storage step
    /// after the switch marks the copy kept, and the delete refuses it.
    /// </summary>
    [Fact]
    public async Task A_late_rollback_delete_after_the_disk_rolled_forward_deletes_nothing()
    {
        await using var bed = await HostLayerBed.StartAsync();
        var (spm, hsm, saga) = Actors(bed);
        var driver = await ToBAsync(bed, MigrationStrategy.PreCopy);
        await PreCopyAsync(driver, spm, hsm, saga, deleteSource: false);
        await bed.Hypervisor.StopVmAsync(bed.Vm); // no QEMU lock on the chain any more

        var late = Assert.IsType<OperationFailed>(await driver.RunAsync(spm, Step.DeleteDestinationImage, saga, attempt: 7));

        Assert.Equal(ErrorCodes.Conflict, late.Code);
        Assert.All((await bed.B.DescribeImageAsync(bed.Image)).Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
        Assert.Equal(3, (await bed.B.DescribeImageAsync(bed.Image)).Volumes.Count);
    }

    /// <summary>
    /// A migration deleted its source image; later another migration moved the disk back onto that domain and kept its
    /// own source (the first one's copy). A late copy of the first migration's source delete, at an SPM that forgot
    /// answering it, found a complete copy it had made and deleted the image: the disk's chain now, with its VM
    /// stopped. The first delete leaves a retired mark on the source, and a later one finding the image back refuses.
    /// </summary>
    [Fact]
    public async Task A_late_source_delete_leaves_alone_an_image_another_migration_moved_back()
    {
        await using var bed = await HostLayerBed.StartAsync();
        var (spm, hsm, saga) = Actors(bed);
        var leaf = (await bed.A.DescribeImageAsync(bed.Image)).Leaf.Id;
        var there = new StepDriver(bed.Vm, new DiskPlan(bed.Image, bed.A.Id, bed.B.Id, 64 * MiB, VolumeId.New(), leaf), MigrationStrategy.PreCopy);
        var back = new StepDriver(bed.Vm, new DiskPlan(bed.Image, bed.B.Id, bed.A.Id, 64 * MiB, VolumeId.New(), leaf), MigrationStrategy.PreCopy);
        await PreCopyAsync(there, spm, hsm, saga, deleteSource: true);
        await PreCopyAsync(back, spm, hsm, saga, deleteSource: false); // back to A, keeping B's chain
        await bed.Hypervisor.StopVmAsync(bed.Vm);

        var late = Assert.IsType<OperationFailed>(await there.RunAsync(spm, Step.DeleteSourceImage, saga, attempt: 9));

        Assert.Equal(ErrorCodes.Conflict, late.Code);
        Assert.Equal(3, (await bed.A.DescribeImageAsync(bed.Image)).Volumes.Count(v => v.Legality == Legality.Legal));
    }

    /// <summary>
    /// A rollback's delete that meets the copy in use (the VM writes on the new leaf: a late live snapshot landed) deletes
    /// nothing; its ended mark stays (late commands stay refused), and the roll forward the saga's next probe leads to
    /// takes it back instead of being refused MIGRATION_ENDED for good.
    /// </summary>
    [Fact]
    public async Task A_rollback_delete_that_finds_the_VM_on_the_copy_deletes_nothing_and_the_roll_forward_takes_its_mark_back()
    {
        await using var bed = await HostLayerBed.StartAsync();
        var (spm, hsm, saga) = Actors(bed);
        var driver = await ToBAsync(bed, MigrationStrategy.PostCopy);
        await driver.SucceedAsync(spm, Step.CreateVolumeCrossDomain, saga);
        await driver.SucceedAsync(hsm, Step.LiveSnapshotToDestination, saga);

        var delete = Assert.IsType<OperationFailed>(await driver.RunAsync(spm, Step.DeleteDestinationImage, saga));

        Assert.Equal(ErrorCodes.VolumeInUse, delete.Code);
        Assert.True(await bed.B.HasMigrationMarkAsync(driver.Migration, bed.Image, MigrationMark.Ended));
        await driver.SucceedAsync(spm, Step.CloneInternalVolumes, saga, timeout: TimeSpan.FromSeconds(60));
        Assert.False(await bed.B.HasMigrationMarkAsync(driver.Migration, bed.Image, MigrationMark.Ended));
        Assert.True(await bed.B.HasMigrationMarkAsync(driver.Migration, bed.Image, MigrationMark.Kept));
        await driver.SucceedAsync(hsm, Step.SwitchBackingChain, saga, timeout: TimeSpan.FromSeconds(60));
        Assert.Equal(await bed.PathsOnAsync(bed.B), (await bed.DriveAsync()).OpenChain);
    }

    /// <summary>
    /// A probe that answers a switch never took effect fences it in the VM's record first (fsync): the saga rolls back
    /// from that answer, and a late copy of the switch (a resend crossing its answer, or reaching an HSM that restarted
    /// and forgot answering it) landing afterwards would put the VM on the copy the rollback then deletes.
    /// </summary>
    [Fact]
    public async Task A_switch_its_probe_answered_never_took_effect_is_refused_when_it_comes_late_even_after_the_host_restarts()
    {
        await using var bed = await HostLayerBed.StartAsync();
        var records = Path.Combine(bed.Root, "host-data");
        var spm = Sys.ActorOf(SpmActor.Props(bed.Pool));
        var hsm = Sys.ActorOf(HsmActor.Props(bed.Hypervisor, bed.Pool, new VmCatalog(records)));
        var saga = CreateTestProbe();
        var driver = await ToBAsync(bed, MigrationStrategy.PostCopy);
        await driver.SucceedAsync(spm, Step.CreateVolumeCrossDomain, saga);
        var before = (await bed.DriveAsync()).OpenChain;

        var probed = await driver.SucceedAsync(hsm, Step.ProbeSwitch, saga); // the live snapshot "failed" without effect
        Assert.Equal(SwitchFinding.OnSource, probed.Outcome.Switch);
        var late = Assert.IsType<OperationFailed>(await driver.RunAsync(hsm, Step.LiveSnapshotToDestination, saga));
        Assert.Equal(ErrorCodes.MigrationEnded, late.Code);

        Sys.Stop(hsm);
        var restarted = Sys.ActorOf(HsmActor.Props(bed.Hypervisor, bed.Pool, new VmCatalog(records)));
        var again = Assert.IsType<OperationFailed>(await driver.RunAsync(restarted, Step.LiveSnapshotToDestination, saga, attempt: 2));
        Assert.Equal(ErrorCodes.MigrationEnded, again.Code);
        Assert.Equal(before, (await bed.DriveAsync()).OpenChain);
        // the rollback removes the copy; another migration of the same disk is not fenced by this one's probe
        await driver.SucceedAsync(spm, Step.DeleteDestinationImage, saga);
        var next = await ToBAsync(bed, MigrationStrategy.PostCopy);
        await next.SucceedAsync(spm, Step.CreateVolumeCrossDomain, saga);
        await next.SucceedAsync(restarted, Step.LiveSnapshotToDestination, saga);
    }

    /// <summary>The SPM and HSM actors over the bed's pool and hypervisor, and a probe standing for the saga.</summary>
    private (IActorRef Spm, IActorRef Hsm, Akka.TestKit.TestProbe Saga) Actors(HostLayerBed bed) =>
        (Sys.ActorOf(SpmActor.Props(bed.Pool)), Sys.ActorOf(HsmActor.Props(bed.Hypervisor, bed.Pool)), CreateTestProbe());

    /// <summary>The drive runs on B alone, every volume there LEGAL, nothing of the image left on A, and the guest lost no write.</summary>
    private static async Task AssertMovedWhollyToBAsync(HostLayerBed bed, int writesAfter)
    {
        var drive = await bed.DriveAsync();
        Assert.Equal(await bed.PathsOnAsync(bed.B), drive.OpenChain);
        Assert.All(drive.OpenChain, p => Assert.StartsWith(bed.B.DomainPath, p));
        Assert.All((await bed.B.DescribeImageAsync(bed.Image)).Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
        Assert.DoesNotContain(bed.Image, await bed.A.ListImagesAsync());
        await bed.AssertGuestLostNothingAsync(drive, writesAfter);
    }

    /// <summary>A migration of the bed's disk from A to B planned as the Coordinator plans it (naming the leaf it runs on).</summary>
    private static async Task<StepDriver> ToBAsync(HostLayerBed bed, MigrationStrategy strategy) =>
        new(bed.Vm, new DiskPlan(bed.Image, bed.A.Id, bed.B.Id, 64 * MiB, VolumeId.New(), (await bed.A.DescribeImageAsync(bed.Image)).Leaf.Id), strategy);

    /// <summary>Every step of a pre-copy through the two actors, each to success.</summary>
    private static async Task PreCopyAsync(StepDriver driver, IActorRef spm, IActorRef hsm, Akka.TestKit.TestProbe saga, bool deleteSource)
    {
        var steps = new[] { (spm, Step.CloneImageStructure), (hsm, Step.StartReplication), (spm, Step.SyncInternalVolumes),
            (hsm, Step.WaitMirrorReady), (hsm, Step.Pivot), (spm, Step.MarkDestinationLeafLegal) };
        foreach (var (host, step) in deleteSource ? steps.Append((spm, Step.DeleteSourceImage)) : steps)
            await driver.SucceedAsync(host, step, saga, timeout: TimeSpan.FromSeconds(60));
    }

    /// <summary>Clones the structure, then sends the copy of the internal layers at 128 KiB/s (12 MiB: about 90 s) and returns once its qemu-img writes the destination.</summary>
    private static async Task<(StepDriver Driver, OperationId Sync)> CopyingSlowlyAsync(HostLayerBed bed, IActorRef spm, Akka.TestKit.TestProbe saga)
    {
        var driver = new StepDriver(bed.Vm, new DiskPlan(bed.Image, bed.A.Id, bed.B.Id, 64 * MiB, VolumeId.New()),
            MigrationStrategy.PreCopy, speed: 128 * 1024);
        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga);
        driver.Send(spm, Step.SyncInternalVolumes, saga);
        var copying = DateTime.UtcNow.AddSeconds(30);
        while (!OrphanCopies.CopiesUnder([bed.B.DomainPath]).Any())
        {
            Assert.True(DateTime.UtcNow < copying, "no qemu-img copied into the destination within 30 s");
            await Task.Delay(20);
        }
        return (driver, driver.Op(Step.SyncInternalVolumes));
    }
}
