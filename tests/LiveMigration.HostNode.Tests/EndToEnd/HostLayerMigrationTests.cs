using System.Text.Json;
using LiveMigration.HostNode.Tests.Contract;
using LiveMigration.HostNode.Guest;
using LiveMigration.HostNode.Migration;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.EndToEnd;

/// <summary>
/// Issue 2 §6: a running QEMU VM's 3-volume chain moves between real file domains while the guest
/// writes through NBD; every acknowledged write is verified afterwards.
/// </summary>
public sealed class HostLayerMigrationTests
{
    private const long MiB = HostLayerBed.MiB;

    /// <summary>Runs inline on the mover's own flow, so a test can hold it at a step while the guest keeps writing.</summary>
    private sealed class StepHook(string step, Action action) : IProgress<MoveProgress>
    {
        public List<string> Steps { get; } = [];
        public void Report(MoveProgress value)
        {
            lock (Steps) Steps.Add(value.Step);
            if (value.Step == step) action();
        }
    }

    [Fact]
    public async Task Pre_copy_moves_the_running_chain_to_B_while_the_guest_writes_and_loses_nothing()
    {
        await using var bed = await HostLayerBed.StartAsync();
        var guest = await bed.StartGuestAsync(2 * MiB);
        await bed.WaitForGuestWritesAsync(50);
        long writesAtReady = 0;
        // At READY the mover pauses a moment, so the guest's writes go on after READY and before the pivot.
        var hook = new StepHook("mirror-ready", () =>
        {
            writesAtReady = guest.Stats.Writes;
            var until = guest.Stats.Writes + 20;
            var deadline = DateTime.UtcNow.AddSeconds(10);
            while (guest.Stats.Writes < until && DateTime.UtcNow < deadline) Thread.Sleep(10);
        });

        // Write-blocking: the guest dirties 64 KiB clusters with 4 KiB writes faster than a background
        // mirror limited to 8 MiB/s copies them, and only write-blocking mode converges then.
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        var report = await bed.Mover().MoveAsync(bed.Vm, bed.Image, bed.A.Id, bed.B.Id,
            new MoveOptions(MoveStrategy.PreCopy, SpeedBytesPerSecond: 8 * MiB, CopyMode: CopyMode.WriteBlocking), hook, timeout.Token);
        Assert.True(guest.Stats.Writes > writesAtReady + 20, "the guest wrote after READY");
        await bed.WaitForGuestWritesAsync(50);

        // The VM runs on B only, and B holds the same chain: same ids, same parents, all LEGAL.
        var drive = await bed.DriveAsync();
        Assert.Equal(await bed.PathsOnAsync(bed.B), drive.OpenChain);
        Assert.All(drive.OpenChain, p => Assert.StartsWith(bed.B.DomainPath, p));
        var onB = await bed.B.DescribeImageAsync(bed.Image);
        Assert.Equal(bed.Volumes, onB.Volumes.Select(v => v.Id));
        Assert.Null(onB.Volumes[0].Parent);
        Assert.Equal(new VolumeRef(bed.B.Id, bed.Volumes[0]), onB.Volumes[1].Parent);
        Assert.Equal(new VolumeRef(bed.B.Id, bed.Volumes[1]), onB.Volumes[2].Parent);
        Assert.All(onB.Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
        Assert.Equal(report.FinalDrive.OpenChain, drive.OpenChain);

        // A was deleted by the mover; the VM keeps running and writing on B.
        Assert.DoesNotContain(bed.Image, await bed.A.ListImagesAsync());
        await bed.AssertGuestLostNothingAsync(drive, writesAfter: 50, alsoOffline: true);
    }

    [Fact]
    public async Task A_background_mirror_the_guest_outruns_is_started_again_write_blocking_and_the_move_completes_losing_nothing()
    {
        await using var bed = await HostLayerBed.StartAsync();
        // Random 4 KiB writes each dirty a 64 KiB cluster: asked for 2 MiB/s, the guest dirties far more than the mirror's
        // 2 MiB/s copies. The guest is a TCG QEMU: on a loaded CI machine it wrote only 6-13 MiB/s of dirty clusters, and
        // with the mirror at 8 MiB/s it sometimes caught up (READY without the restart this test is about).
        await bed.StartGuestAsync(2 * MiB);
        await bed.WaitForGuestWritesAsync(50);
        var hook = new StepHook("none", () => { });

        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        var mover = new DiskMover(bed.Pool, bed.Hypervisor) { ConvergenceWindow = TimeSpan.FromSeconds(3) };
        var report = await mover.MoveAsync(bed.Vm, bed.Image, bed.A.Id, bed.B.Id,
            new MoveOptions(MoveStrategy.PreCopy, SpeedBytesPerSecond: 2 * MiB, CopyMode: CopyMode.Background), hook, timeout.Token);

        lock (hook.Steps)
        {
            var restart = hook.Steps.IndexOf("mirror-write-blocking");
            Assert.True(restart > 0, $"the mirror was not started again write-blocking: {string.Join(", ", hook.Steps.Distinct())}");
            Assert.Contains("mirror-ready", hook.Steps.Skip(restart));
        }
        var drive = await bed.DriveAsync();
        Assert.Equal(await bed.PathsOnAsync(bed.B), drive.OpenChain);
        Assert.Equal(report.FinalDrive.OpenChain, drive.OpenChain);
        Assert.All((await bed.B.DescribeImageAsync(bed.Image)).Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
        Assert.DoesNotContain(bed.Image, await bed.A.ListImagesAsync());

        await bed.AssertGuestLostNothingAsync(drive, writesAfter: 50, alsoOffline: true);
    }

    [Fact]
    public async Task Post_copy_ends_with_every_open_node_on_B_and_the_new_leaf_pointing_at_Bs_copy()
    {
        await using var bed = await HostLayerBed.StartAsync();
        var guest = await bed.StartGuestAsync(2 * MiB);
        await bed.WaitForGuestWritesAsync(50);
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        var report = await bed.Mover().MoveAsync(bed.Vm, bed.Image, bed.A.Id, bed.B.Id, new MoveOptions(MoveStrategy.PostCopy), null, timeout.Token);
        await bed.WaitForGuestWritesAsync(50);

        var drive = await bed.DriveAsync();
        Assert.Equal(4, drive.OpenChain.Count);
        Assert.All(drive.OpenChain, p => Assert.StartsWith(bed.B.DomainPath, p));
        var onB = await bed.B.DescribeImageAsync(bed.Image);
        Assert.Equal(bed.Volumes, onB.Volumes.Take(3).Select(v => v.Id));
        var newLeaf = onB.Leaf;
        Assert.DoesNotContain(newLeaf.Id, bed.Volumes);
        Assert.Equal(new VolumeRef(bed.B.Id, bed.Volumes[2]), newLeaf.Parent);
        Assert.All(onB.Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
        Assert.All(onB.Volumes.Take(3), v => Assert.Equal(VolumeType.Internal, v.Type));

        // The header names B's copy of the old leaf (relatively, as a same-domain parent).
        var info = await Processes.ProcessRunner.RunCheckedAsync("qemu-img",
            ["info", "-U", "--output=json", bed.B.Locate(bed.Image, newLeaf.Id)], ErrorCodes.QemuImgFailed);
        Assert.Equal(bed.Volumes[2].ToString(), JsonDocument.Parse(info).RootElement.GetProperty("backing-filename").GetString());
        Assert.DoesNotContain(bed.Image, await bed.A.ListImagesAsync());

        var stats = await guest.StopAsync();
        Assert.Equal(0, stats.Errors);
        var live = await GuestVerifier.VerifyThroughNbdAsync(drive.GuestSocket, drive.ExportName, guest.Ledger);
        Assert.True(live.Ok, string.Join("; ", live.Mismatches.Take(5)));
        Assert.True(report.SwitchTime < TimeSpan.FromSeconds(10));
    }

    [Fact]
    public async Task Cancel_during_the_mirror_leaves_the_VM_on_A_and_only_ILLEGAL_volumes_on_B_which_the_cleanup_removes()
    {
        await using var bed = await HostLayerBed.StartAsync();
        var guest = await bed.StartGuestAsync(1 * MiB);
        var source = await bed.PathsOnAsync(bed.A);

        // The steps a saga would have sent so far: clone the structure, start a slow mirror.
        var clone = await bed.B.CloneImageStructureAsync(bed.A, bed.Image, TestOwners.Default);
        var leaf = clone.Leaf;
        await bed.Hypervisor.StartMirrorAsync(new MirrorRequest(bed.Vm, bed.Image,
            new ChainLayer(new VolumeRef(bed.B.Id, leaf.Id), bed.B.Locate(bed.Image, leaf.Id), leaf.Format), 256 * 1024));
        await bed.WaitForGuestWritesAsync(20);
        Assert.Equal(BlockJobPhase.Running, (await bed.Hypervisor.GetBlockJobAsync(bed.Vm, bed.Image))!.Phase);

        var after = await bed.Hypervisor.CancelMirrorAsync(bed.Vm, bed.Image);
        Assert.Equal(source, after.OpenChain);
        Assert.Null((await bed.DriveAsync()).Job);
        Assert.All((await bed.B.DescribeImageAsync(bed.Image)).Volumes, v => Assert.Equal(Legality.Illegal, v.Legality));

        var removed = await bed.B.RemoveIllegalLeftoversAsync(new HashSet<ImageId>());
        Assert.Equal(3, removed.Count);
        Assert.Empty(await bed.B.ListImagesAsync());
        Assert.Empty(Directory.GetFileSystemEntries(Path.Combine(bed.B.DomainPath, "images")));

        await bed.WaitForGuestWritesAsync(20);
        var drive = await bed.DriveAsync();
        var stats = await guest.StopAsync();
        Assert.Equal(0, stats.Errors);
        Assert.True((await GuestVerifier.VerifyThroughNbdAsync(drive.GuestSocket, drive.ExportName, guest.Ledger)).Ok);
    }

    [Fact]
    public async Task Cancelling_a_move_before_the_pivot_rolls_back_and_B_is_left_empty()
    {
        await using var bed = await HostLayerBed.StartAsync();
        var source = await bed.PathsOnAsync(bed.A);
        using var cancel = new CancellationTokenSource();
        var hook = new StepHook("mirror", cancel.Cancel);

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => bed.Mover().MoveAsync(bed.Vm, bed.Image, bed.A.Id, bed.B.Id,
            new MoveOptions(SpeedBytesPerSecond: 256 * 1024), hook, cancel.Token));

        var drive = await bed.DriveAsync();
        Assert.Equal(source, drive.OpenChain);
        Assert.Null(drive.Job);
        Assert.Empty(await bed.B.ListImagesAsync());
        Assert.All((await bed.A.DescribeImageAsync(bed.Image)).Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
    }

    [Fact]
    public async Task QEMU_killed_during_the_mirror_is_VM_NOT_RUNNING_and_A_stays_intact()
    {
        await using var bed = await HostLayerBed.StartAsync();
        // Each write durable on its own (FUA): a guest that is killed keeps exactly what was acknowledged.
        var guest = await bed.StartGuestAsync(1 * MiB, forceUnitAccess: true);
        await bed.WaitForGuestWritesAsync(20);
        var pid = (await bed.Hypervisor.DescribeVmAsync(bed.Vm)).Pid!.Value;
        var hook = new StepHook("mirror", () => System.Diagnostics.Process.GetProcessById(pid).Kill());

        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        var error = await Assert.ThrowsAsync<OperationFailedException>(() => bed.Mover().MoveAsync(bed.Vm, bed.Image, bed.A.Id, bed.B.Id,
            new MoveOptions(SpeedBytesPerSecond: 256 * 1024), hook, timeout.Token));
        Assert.Equal(ErrorCodes.VmNotRunning, error.Code);

        // The rollback cleaned B; A holds the chain, LEGAL, and every acknowledged write.
        Assert.Empty(await bed.B.ListImagesAsync());
        var onA = await bed.A.DescribeImageAsync(bed.Image);
        Assert.Equal(bed.Volumes, onA.Volumes.Select(v => v.Id));
        Assert.All(onA.Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
        await guest.StopAsync();
        var offline = await GuestVerifier.VerifyImageAsync(bed.A.Locate(bed.Image, onA.Leaf.Id), onA.Leaf.Format, WriteLedger.Load(bed.LedgerPath));
        Assert.True(offline.Ok, string.Join("; ", offline.Mismatches.Take(5)));
        Assert.True(offline.BlocksChecked > 10);
        // qemu-img check: 0 clean, 3 leaked clusters only (normal after a killed writer: space, not data), 2 corruption.
        var check = await Processes.ProcessRunner.RunAsync("qemu-img", ["check", "-U", bed.A.Locate(bed.Image, onA.Leaf.Id)]);
        Assert.True(check.ExitCode is 0 or 3, $"qemu-img check exit {check.ExitCode}: {check.StandardOutput}{check.StandardError}");
    }

    [Fact]
    public async Task A_restarted_host_adopts_the_VM_and_its_mirror_and_the_pivot_then_succeeds()
    {
        await using var bed = await HostLayerBed.StartAsync();
        var guest = await bed.StartGuestAsync(1 * MiB);
        var clone = await bed.B.CloneImageStructureAsync(bed.A, bed.Image, TestOwners.Default);
        await bed.Hypervisor.StartMirrorAsync(new MirrorRequest(bed.Vm, bed.Image,
            new ChainLayer(new VolumeRef(bed.B.Id, clone.Leaf.Id), bed.B.Locate(bed.Image, clone.Leaf.Id), VolumeFormat.Cow), 256 * 1024));
        await bed.WaitForGuestWritesAsync(20);

        // The host process goes away: its QMP connections close, QEMU and the job run on.
        await bed.Hypervisor.DisposeAsync();
        var restarted = bed.NewHypervisor();
        bed.UseHypervisor(restarted);
        var adopted = await restarted.AdoptRunningVmsAsync();
        var vm = Assert.Single(adopted);
        Assert.Equal(bed.Vm, vm.Id);
        var job = vm.Drive(bed.Image).Job;
        Assert.NotNull(job);
        Assert.Equal(BlockJobPhase.Running, job.Phase);

        // The rest of the pre-copy, driven on the new instance.
        await restarted.SetJobSpeedAsync(bed.Vm, bed.Image, 0);
        foreach (var volume in clone.Volumes.Take(2))
            await bed.B.CopyVolumeDataAsync(bed.A, bed.Image, volume.Id);
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while ((await restarted.GetBlockJobAsync(bed.Vm, bed.Image))!.Phase != BlockJobPhase.Ready)
        {
            Assert.True(DateTime.UtcNow < deadline, "the adopted mirror never became READY");
            await Task.Delay(50);
        }
        var backing = (await bed.Pool.ResolveChainAsync(bed.B.Id, bed.Image)).Backing;
        var pivoted = await restarted.PivotAsync(bed.Vm, bed.Image, backing);
        Assert.Equal(await bed.PathsOnAsync(bed.B), pivoted.OpenChain);

        await bed.WaitForGuestWritesAsync(20);
        var stats = await guest.StopAsync();
        Assert.Equal(0, stats.Errors);
        Assert.True((await GuestVerifier.VerifyThroughNbdAsync(pivoted.GuestSocket, pivoted.ExportName, guest.Ledger)).Ok);
    }

    [Fact]
    public async Task A_destination_too_small_is_refused_up_front_with_the_numbers_and_nothing_is_created()
    {
        await using var bed = await HostLayerBed.StartAsync(capacityOfB: 4 * MiB);
        var source = await bed.PathsOnAsync(bed.A);

        var error = await Assert.ThrowsAsync<OperationFailedException>(() =>
            bed.Mover().MoveAsync(bed.Vm, bed.Image, bed.A.Id, bed.B.Id));
        Assert.Equal(ErrorCodes.NotEnoughSpace, error.Code);
        Assert.Matches("[0-9]+", error.Message);
        Assert.Contains(bed.B.Id.ToString(), error.Message);

        Assert.Empty(await bed.B.ListImagesAsync());
        var drive = await bed.DriveAsync();
        Assert.Equal(source, drive.OpenChain);
        Assert.Null(drive.Job);
    }

    [Fact]
    public async Task A_move_onto_the_same_domain_or_of_an_unknown_drive_is_refused_and_nothing_changes()
    {
        await using var bed = await HostLayerBed.StartAsync();
        var same = await Assert.ThrowsAsync<OperationFailedException>(() => bed.Mover().MoveAsync(bed.Vm, bed.Image, bed.A.Id, bed.A.Id));
        Assert.Equal(ErrorCodes.InvalidArgument, same.Code);
        var unknown = await Assert.ThrowsAsync<OperationFailedException>(() => bed.Mover().MoveAsync(bed.Vm, ImageId.New(), bed.A.Id, bed.B.Id));
        Assert.Equal(ErrorCodes.ImageNotFound, unknown.Code);
        var noVm = await Assert.ThrowsAsync<OperationFailedException>(() => bed.Mover().MoveAsync(VmId.New(), bed.Image, bed.A.Id, bed.B.Id));
        Assert.Equal(ErrorCodes.VmNotFound, noVm.Code);
        Assert.Empty(await bed.B.ListImagesAsync());
        Assert.Equal(await bed.PathsOnAsync(bed.A), (await bed.DriveAsync()).OpenChain);
    }
}
