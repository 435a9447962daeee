using System.Diagnostics;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Storage;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Migration;

public enum MoveStrategy { PreCopy, PostCopy }

public sealed record MoveOptions(
    MoveStrategy Strategy = MoveStrategy.PreCopy,
    /// <summary>Mirror speed limit in bytes per second; 0 = unlimited.</summary>
    long SpeedBytesPerSecond = 0,
    CopyMode CopyMode = CopyMode.Background,
    /// <summary>Delete the source image once the VM runs on the destination only.</summary>
    bool DeleteSource = true,
    /// <summary>Attempts of each step after the point of no return (post-copy) before giving up as suspended.</summary>
    int RollForwardAttempts = 3);

/// <summary>Where a move is, for people watching it.</summary>
public sealed record MoveProgress(ImageId Image, string Step, long Done, long Total);

/// <summary>What a finished move took, step by step.</summary>
public sealed record MoveReport(
    ImageId Image,
    MoveStrategy Strategy,
    IReadOnlyList<(string Step, TimeSpan Took)> Steps,
    TimeSpan Total,
    /// <summary>The time the switch itself took: block-job-complete for pre-copy, the live snapshot for post-copy.</summary>
    TimeSpan SwitchTime,
    long BytesCopied,
    DriveState FinalDrive);

/// <summary>
/// The host-layer sequence of one disk move (DESIGN §3) on a single host that sees both domains:
/// the steps the cluster saga will later send one by one to the SPM and the HSM. Before the point
/// of no return any failure rolls back (cancel the mirror, delete the destination image, the VM
/// runs on as before); after it, steps are retried, and if they still fail the VM keeps running on
/// a valid cross-domain chain and <see cref="MoveSuspendedException"/> says why.
/// </summary>
public sealed class DiskMover(StoragePool pool, IHypervisor hypervisor)
{
    public Task<MoveReport> MoveAsync(VmId vm, ImageId image, DomainId source, DomainId destination,
        MoveOptions? options = null, IProgress<MoveProgress>? progress = null, CancellationToken ct = default)
    {
        options ??= new MoveOptions();
        // Each move is a migration of its own: it owns the volumes it makes, and deletes only those (DESIGN §7 invariant 3).
        var owner = new VolumeOwner(MigrationId.New(), VolumeOwner.Unfenced);
        return options.Strategy == MoveStrategy.PreCopy
            ? PreCopyAsync(vm, image, source, destination, owner, options, progress, ct)
            : PostCopyAsync(vm, image, source, destination, owner, options, progress, ct);
    }

    private async Task<(IStorageDomain Src, IStorageDomain Dst, ImageInfo SrcImage)> ValidateAsync(
        VmId vm, ImageId image, DomainId source, DomainId destination, CancellationToken ct)
    {
        if (source == destination)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"image {image} is already on domain {destination}");
        var src = pool.Get(source);
        var dst = pool.Get(destination);
        var vmInfo = await hypervisor.DescribeVmAsync(vm, ct);
        if (!vmInfo.Running)
            throw new OperationFailedException(ErrorCodes.VmNotRunning, $"VM {vm} is not running");
        var drive = vmInfo.Drive(image);
        var srcImage = await src.DescribeImageAsync(image, ct);
        var expectedLeaf = src.Locate(image, srcImage.Leaf.Id);
        if (drive.OpenChain.Count == 0 || drive.OpenChain[^1] != expectedLeaf)
            throw new OperationFailedException(ErrorCodes.Conflict,
                $"VM {vm} drive {image} runs on {(drive.OpenChain.Count == 0 ? "nothing" : drive.OpenChain[^1])}, not on the leaf of domain {source}");
        if (drive.Job is not null)
            throw new OperationFailedException(ErrorCodes.Conflict, $"VM {vm} drive {image} already has block job {drive.Job.JobId}");
        return (src, dst, srcImage);
    }

    private async Task<MoveReport> PreCopyAsync(VmId vm, ImageId image, DomainId source, DomainId destination, VolumeOwner owner,
        MoveOptions options, IProgress<MoveProgress>? progress, CancellationToken ct)
    {
        var clock = new StepClock();
        var (src, dst, srcImage) = await ValidateAsync(vm, image, source, destination, ct);
        long copied = 0;
        TimeSpan pivotTook;
        DriveState final;
        try
        {
            progress?.Report(new MoveProgress(image, "clone-structure", 0, 1));
            var clone = await dst.CloneImageStructureAsync(src, image, owner, ct);
            clock.Lap("clone-structure");

            var leaf = clone.Leaf;
            var job = await hypervisor.StartMirrorAsync(new MirrorRequest(vm, image,
                new ChainLayer(new VolumeRef(dst.Id, leaf.Id), dst.Locate(image, leaf.Id), leaf.Format),
                options.SpeedBytesPerSecond, options.CopyMode), ct);
            progress?.Report(new MoveProgress(image, "mirror", job.Offset, job.Length));
            clock.Lap("start-mirror");

            // The internal layers are read-only in QEMU, so the SPM copies them while the mirror runs.
            foreach (var volume in clone.Volumes.Take(clone.Volumes.Count - 1))
            {
                var step = $"sync-internal {volume.Id}";
                var copiedVolume = await dst.CopyVolumeDataAsync(src, image, volume.Id,
                    progress is null ? null : new Progress<CopyProgress>(p => progress.Report(new MoveProgress(image, step, p.Done, p.Total))), ct);
                copied += copiedVolume.AllocatedBytes;
            }
            clock.Lap("sync-internal");

            var ready = await WaitForMirrorReadyAsync(vm, image, progress, ct);
            copied += ready.Length;
            clock.Lap("mirror-ready");
            progress?.Report(new MoveProgress(image, "mirror-ready", ready.Offset, ready.Length));

            var backing = (await pool.ResolveChainAsync(dst.Id, image, ct)).Backing;
            var pivotClock = Stopwatch.StartNew();
            final = await hypervisor.PivotAsync(vm, image, backing, ct);
            pivotTook = pivotClock.Elapsed;
            clock.Lap("pivot");
        }
        catch (Exception e)
        {
            await RollBackPreCopyAsync(vm, image, dst, owner, e);
            throw;
        }

        // Past the pivot: the VM writes on the destination. Confirm it, then finish forward.
        var destinationChain = await pool.ResolveChainAsync(dst.Id, image, CancellationToken.None);
        EnsureRunsOn(final, destinationChain, vm);
        await dst.MarkLegalAsync(image, destinationChain.Leaf.Volume.Volume, CancellationToken.None);
        if (options.DeleteSource)
            await SourceRetirement.DeleteSourceImageAsync(src, dst, image, owner.Migration, CancellationToken.None);
        clock.Lap("finish");
        progress?.Report(new MoveProgress(image, "completed", 1, 1));
        return new MoveReport(image, MoveStrategy.PreCopy, clock.Laps, clock.Total, pivotTook, copied, final);
    }

    private async Task RollBackPreCopyAsync(VmId vm, ImageId image, IStorageDomain dst, VolumeOwner owner, Exception cause)
    {
        try
        {
            await hypervisor.CancelMirrorAsync(vm, image, CancellationToken.None);
        }
        catch (OperationFailedException e) when (e.Code is ErrorCodes.VmNotRunning or ErrorCodes.NoSuchJob or ErrorCodes.VmNotFound)
        {
            // Nothing to cancel: the VM is gone or the mirror never started.
        }
        catch (OperationFailedException e)
        {
            throw new OperationFailedException(e.Code,
                $"rollback of image {image} could not cancel the mirror ({e.Message}) after: {cause.Message}", cause);
        }
        await dst.DeleteOwnedVolumesAsync(image, owner, CancellationToken.None);
    }

    private async Task<MoveReport> PostCopyAsync(VmId vm, ImageId image, DomainId source, DomainId destination, VolumeOwner owner,
        MoveOptions options, IProgress<MoveProgress>? progress, CancellationToken ct)
    {
        var clock = new StepClock();
        var (src, dst, srcImage) = await ValidateAsync(vm, image, source, destination, ct);
        var oldLeaf = srcImage.Leaf;
        var newLeafId = VolumeId.New();
        TimeSpan snapshotTook;
        try
        {
            progress?.Report(new MoveProgress(image, "create-cross-domain-leaf", 0, 1));
            var newLeaf = await dst.CreateVolumeAsync(new NewVolume(image, newLeafId, VolumeFormat.Cow, oldLeaf.Capacity,
                new VolumeRef(src.Id, oldLeaf.Id), Legality.Legal, owner), src, ct);
            clock.Lap("create-cross-domain-leaf");

            var snapshotClock = Stopwatch.StartNew();
            await hypervisor.LiveSnapshotAsync(vm, image,
                new ChainLayer(new VolumeRef(dst.Id, newLeaf.Id), dst.Locate(image, newLeaf.Id), newLeaf.Format), ct);
            snapshotTook = snapshotClock.Elapsed;
            clock.Lap("live-snapshot");
        }
        catch (Exception)
        {
            // Before the snapshot the VM never wrote on the destination: drop what was made there.
            await dst.DeleteOwnedVolumesAsync(image, owner, CancellationToken.None);
            throw;
        }

        // Point of no return: the VM writes on the destination leaf over the source chain. Roll forward.
        long copied = 0;
        var final = await RollForwardAsync("clone-internal-volumes", options, async () =>
        {
            // Twins of the old chain under the new leaf, empty and ILLEGAL until copied and verified.
            await dst.CloneImageStructureAsync(src, image, owner, ct);
            foreach (var volume in srcImage.Volumes)
            {
                var step = $"clone-internal {volume.Id}";
                var copiedVolume = await dst.CopyVolumeDataAsync(src, image, volume.Id,
                    progress is null ? null : new Progress<CopyProgress>(p => progress.Report(new MoveProgress(image, step, p.Done, p.Total))), ct);
                copied += copiedVolume.AllocatedBytes;
            }
            // The SPM points the new leaf's metadata at the copy; QEMU rewrites the header in the switch.
            await dst.SetParentAsync(image, newLeafId, new VolumeRef(dst.Id, oldLeaf.Id), null, rewriteHeader: false, ct);
            clock.Lap("clone-internal-volumes");

            var copyChain = await pool.ResolveChainAsync(await dst.DescribeVolumeAsync(image, oldLeaf.Id, ct), ct);
            var switched = await hypervisor.SwitchBackingChainAsync(vm, image, copyChain.Layers, ct);
            clock.Lap("switch-backing-chain");
            EnsureRunsOn(switched, await pool.ResolveChainAsync(dst.Id, image, ct), vm);
            return switched;
        }, ct);

        if (options.DeleteSource)
            await SourceRetirement.DeleteSourceImageAsync(src, dst, image, owner.Migration, CancellationToken.None);
        clock.Lap("finish");
        progress?.Report(new MoveProgress(image, "completed", 1, 1));
        return new MoveReport(image, MoveStrategy.PostCopy, clock.Laps, clock.Total, snapshotTook, copied, final);
    }

    private static async Task<T> RollForwardAsync<T>(string step, MoveOptions options, Func<Task<T>> attempt, CancellationToken ct)
    {
        var delay = TimeSpan.FromMilliseconds(200);
        for (var i = 1; ; i++)
        {
            try
            {
                return await attempt();
            }
            catch (OperationFailedException e) when (i < options.RollForwardAttempts && e.Code != ErrorCodes.VmNotRunning)
            {
                await Task.Delay(delay, ct);
                delay *= 2;
            }
            catch (Exception e) when (e is OperationFailedException or OperationCanceledException)
            {
                throw new MoveSuspendedException(step, e);
            }
        }
    }

    private async Task<BlockJobInfo> WaitForMirrorReadyAsync(VmId vm, ImageId image, IProgress<MoveProgress>? progress, CancellationToken ct)
    {
        var outcome = new TaskCompletionSource<HypervisorEvent>(TaskCreationOptions.RunContinuationsAsynchronously);
        void OnEvent(HypervisorEvent e)
        {
            if (e.Vm != vm) return;
            if (e is BlockJobReady r && r.Drive == image || e is BlockJobFailed f && f.Drive == image
                || e is BlockJobCancelled c && c.Drive == image || e is VmStopped)
                outcome.TrySetResult(e);
        }
        hypervisor.EventRaised += OnEvent;
        try
        {
            while (true)
            {
                // Readiness comes as an event; the job is read between waits to show progress
                // (QEMU has no progress event) and so an event sent before we subscribed is not missed.
                var job = await hypervisor.GetBlockJobAsync(vm, image, ct)
                          ?? throw new OperationFailedException(ErrorCodes.NoSuchJob, $"the mirror of drive {image} on VM {vm} is gone");
                progress?.Report(new MoveProgress(image, "mirror", job.Offset, job.Length));
                if (job.Phase == BlockJobPhase.Ready) return job;
                if (job.Phase is BlockJobPhase.Failed or BlockJobPhase.Cancelled)
                    throw new OperationFailedException(ErrorCodes.JobFailed, $"the mirror of drive {image} ended {job.Phase}: {job.Error}");
                var done = await Task.WhenAny(outcome.Task, Task.Delay(TimeSpan.FromMilliseconds(250), ct));
                ct.ThrowIfCancellationRequested();
                if (done == outcome.Task)
                {
                    switch (outcome.Task.Result)
                    {
                        case BlockJobFailed failed:
                            throw new OperationFailedException(ErrorCodes.JobFailed, $"the mirror of drive {image} failed: {failed.Error}");
                        case BlockJobCancelled:
                            throw new OperationFailedException(ErrorCodes.JobFailed, $"the mirror of drive {image} was cancelled");
                        case VmStopped stopped:
                            throw new OperationFailedException(ErrorCodes.VmNotRunning, $"VM {vm} stopped during the mirror: {stopped.Reason}");
                    }
                    outcome = new TaskCompletionSource<HypervisorEvent>(TaskCreationOptions.RunContinuationsAsynchronously);
                }
            }
        }
        finally
        {
            hypervisor.EventRaised -= OnEvent;
        }
    }

    private static void EnsureRunsOn(DriveState drive, DriveChain expected, VmId vm)
    {
        var want = expected.Layers.Select(l => l.Path).ToList();
        if (!drive.OpenChain.SequenceEqual(want))
            throw new OperationFailedException(ErrorCodes.Conflict,
                $"VM {vm} drive {drive.Image} runs on [{string.Join(", ", drive.OpenChain)}], expected [{string.Join(", ", want)}]");
    }

    private sealed class StepClock
    {
        private readonly Stopwatch _total = Stopwatch.StartNew();
        private TimeSpan _last;
        public List<(string Step, TimeSpan Took)> Laps { get; } = [];
        public TimeSpan Total => _total.Elapsed;
        public void Lap(string step)
        {
            var now = _total.Elapsed;
            Laps.Add((step, now - _last));
            _last = now;
        }
    }
}

/// <summary>
/// A post-copy move that passed its point of no return and could not finish: the VM runs on a
/// valid cross-domain chain that the metadata describes, until an operator resumes or abandons it.
/// </summary>
public sealed class MoveSuspendedException(string step, Exception cause)
    : Exception($"move suspended at {step}: {cause.Message}", cause)
{
    public string Step { get; } = step;
}
