using System.Diagnostics;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Management;
using LiveMigration.HostNode.Steps;
using LiveMigration.HostNode.Storage;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

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
/// The host-layer sequence of one disk move (DESIGN §3) on a single host that sees both domains: the saga's steps in
/// the saga's order, each run by the same code the SPM and HSM actors run (<see cref="StorageSteps"/>,
/// <see cref="DriveSteps"/>) on a plan that names the source leaf (the one the drive has open) and the new leaf by id.
/// Before the point of no return any failure rolls back (cancel the mirror, delete the destination image, the VM runs
/// on as before). A switch that fails is probed first (DESIGN §7.4): rolled back only when the drive runs on the source,
/// rolled forward when it runs on the destination, and left as it is, both chains kept, when nobody can tell. After the
/// switch, steps are retried, and if they still fail the VM keeps running on a valid chain and
/// <see cref="MoveSuspendedException"/> says why.
/// </summary>
/// <param name="catalog">
/// The host's VM records, when the VM is one its host manages: the switches then write their intent and outcome there as
/// the HSM's do. Null for a VM started on the hypervisor directly (the host-layer demo and tests): nobody starts it again
/// from a record, so there is none to keep, and a switch in doubt with QEMU gone cannot be decided (the move is suspended).
/// </param>
public sealed class DiskMover(StoragePool pool, IHypervisor hypervisor, VmCatalog? catalog = null)
{
    private readonly IHypervisor _hypervisor = hypervisor;
    private readonly StorageSteps _storage = new(pool);
    private readonly DriveSteps _drive = new(hypervisor, pool, new DriveRecords(hypervisor, pool, catalog));

    /// <summary>How long a background mirror is watched before it is judged not to converge.</summary>
    public TimeSpan ConvergenceWindow { get; init; } = MirrorConvergence.DefaultWindow;
    /// <summary>How long a mirror's remaining work may not shrink before the move gives up (<see cref="MirrorConvergence"/>).</summary>
    public TimeSpan StallWindow { get; init; } = MirrorConvergence.DefaultStallWindow;

    public async Task<MoveReport> MoveAsync(VmId vm, ImageId image, DomainId source, DomainId destination,
        MoveOptions? options = null, IProgress<MoveProgress>? progress = null, CancellationToken ct = default)
    {
        options ??= new MoveOptions();
        var plan = await PlanAsync(vm, image, source, destination, ct);
        // Each move is a migration of its own: it owns the volumes it makes, and deletes only those (DESIGN §7 invariant 3).
        var move = new Move(this, vm, plan, MigrationId.New(), options, progress);
        return options.Strategy == MoveStrategy.PreCopy ? await move.PreCopyAsync(ct) : await move.PostCopyAsync(ct);
    }

    /// <summary>
    /// Validates the move and names its leaves: the source leaf is the volume the drive has open as its top, read from
    /// QEMU and mapped to its volume as the host's reports map it (the same fact the saga's plan takes from them).
    /// </summary>
    private async Task<DiskPlan> PlanAsync(VmId vm, ImageId image, DomainId source, DomainId destination, CancellationToken ct)
    {
        if (source == destination)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"image {image} is already on domain {destination}");
        pool.Get(source);
        pool.Get(destination);
        var vmInfo = await _hypervisor.DescribeVmAsync(vm, ct);
        if (!vmInfo.Running)
            throw new OperationFailedException(ErrorCodes.VmNotRunning, $"VM {vm} is not running");
        var drive = vmInfo.Drive(image);
        if (drive.Job is not null)
            throw new OperationFailedException(ErrorCodes.Conflict, $"VM {vm} drive {image} already has block job {drive.Job.JobId}");
        var open = await VmReports.DescribeDriveAsync(drive, pool, ct);
        if (open.Chain.Count == 0 || open.Chain.Count != drive.OpenChain.Count || open.Chain.Any(layer => layer.Domain != source))
            throw new OperationFailedException(ErrorCodes.Conflict,
                $"VM {vm} drive {image} runs on [{string.Join(", ", drive.OpenChain)}], not on a chain that lies wholly on domain {source}");
        return new DiskPlan(image, source, destination, open.AllocatedBytes, NewLeaf: VolumeId.New(), SourceLeaf: open.Chain[^1].Volume);
    }

    /// <summary>One move under way: its plan, its step clock, and the steps it started (what a rollback undoes).</summary>
    private sealed class Move(DiskMover mover, VmId vm, DiskPlan plan, MigrationId migration, MoveOptions options, IProgress<MoveProgress>? progress)
    {
        private readonly StepClock _clock = new();
        private readonly HashSet<MigrationStep> _started = [];
        private readonly Dictionary<MigrationStep, int> _attempts = [];
        private ImageId Image => plan.Image;
        private MigrationStrategy Strategy => options.Strategy == MoveStrategy.PreCopy ? MigrationStrategy.PreCopy : MigrationStrategy.PostCopy;

        public async Task<MoveReport> PreCopyAsync(CancellationToken ct)
        {
            long copied = 0;
            try
            {
                Report("clone-structure", 0, 1);
                await StepAsync(MigrationStep.CloneImageStructure, ct);
                _clock.Lap("clone-structure");

                await StepAsync(MigrationStep.StartReplication, ct);
                if (await mover._hypervisor.GetBlockJobAsync(vm, Image, ct) is { } job) Report("mirror", job.Offset, job.Length);
                _clock.Lap("start-mirror");

                // The internal layers are read-only in QEMU, so they are copied while the mirror runs.
                copied += (await StepAsync(MigrationStep.SyncInternalVolumes, ct, CopyProgressAs("sync-internal"))).BytesCopied;
                _clock.Lap("sync-internal");

                var ready = await WaitForMirrorReadyAsync(ct);
                copied += ready.Length;
                _clock.Lap("mirror-ready");
                Report("mirror-ready", ready.Offset, ready.Length);
            }
            catch (Exception e)
            {
                await RollBackAsync(e);
                throw;
            }

            var pivotTook = await SwitchAsync(MigrationStep.Pivot, ct);
            _clock.Lap("pivot");

            // Past the pivot: the VM writes on the destination. Finish forward, cancelled or not.
            await RollForwardAsync(MigrationStep.MarkDestinationLeafLegal, CancellationToken.None);
            if (options.DeleteSource) await RollForwardAsync(MigrationStep.DeleteSourceImage, CancellationToken.None);
            _clock.Lap("finish");
            return await FinishAsync(pivotTook, copied);
        }

        public async Task<MoveReport> PostCopyAsync(CancellationToken ct)
        {
            try
            {
                Report("create-cross-domain-leaf", 0, 1);
                await StepAsync(MigrationStep.CreateVolumeCrossDomain, ct);
                _clock.Lap("create-cross-domain-leaf");
            }
            catch (Exception e)
            {
                // Before the snapshot the VM never wrote on the destination: drop what was made there.
                await RollBackAsync(e);
                throw;
            }

            var snapshotTook = await SwitchAsync(MigrationStep.LiveSnapshotToDestination, ct);
            _clock.Lap("live-snapshot");

            // Point of no return: the VM writes on the destination leaf over the source chain. Roll forward.
            var copied = (await RollForwardAsync(MigrationStep.CloneInternalVolumes, ct, CopyProgressAs("clone-internal"))).BytesCopied;
            _clock.Lap("clone-internal-volumes");
            await RollForwardAsync(MigrationStep.SwitchBackingChain, ct);
            _clock.Lap("switch-backing-chain");
            if (options.DeleteSource) await RollForwardAsync(MigrationStep.DeleteSourceImage, ct);
            _clock.Lap("finish");
            return await FinishAsync(snapshotTook, copied);
        }

        private async Task<MoveReport> FinishAsync(TimeSpan switchTook, long copied)
        {
            Report("completed", 1, 1);
            var final = (await mover._hypervisor.DescribeVmAsync(vm, CancellationToken.None)).Drive(Image);
            return new MoveReport(Image, options.Strategy, _clock.Laps, _clock.Total, switchTook, copied, final);
        }

        /// <summary>Runs a step by the one implementation the actors run too.</summary>
        private async Task<StepOutcome> StepAsync(MigrationStep step, CancellationToken ct, IProgress<CopyProgress>? copyProgress = null)
        {
            _started.Add(step);
            var attempt = _attempts[step] = _attempts.GetValueOrDefault(step) + 1;
            var command = new ExecuteStep(new OperationId(migration, step, Image, attempt), vm, plan, Strategy,
                options.SpeedBytesPerSecond, options.CopyMode);
            return StorageSteps.Runs(step)
                ? await mover._storage.RunAsync(command, copyProgress, ct)
                : await mover._drive.RunAsync(command, ct);
        }

        /// <summary>
        /// The switch (pivot or live snapshot); when it fails its outcome may be unknown (DESIGN §7.4), so the drive is
        /// probed before anything is undone: on the source, roll back; on the destination, go on; nobody can tell,
        /// suspend with both chains kept. Returns how long the switch took.
        /// </summary>
        private async Task<TimeSpan> SwitchAsync(MigrationStep step, CancellationToken ct)
        {
            var took = Stopwatch.StartNew();
            try
            {
                await StepAsync(step, ct);
                return took.Elapsed;
            }
            catch (Exception e) when (e is OperationFailedException or OperationCanceledException)
            {
                StepOutcome probe;
                try
                {
                    probe = await StepAsync(MigrationStep.ProbeSwitch, CancellationToken.None);
                }
                catch (OperationFailedException unknown)
                {
                    throw new MoveSuspendedException(StepName(step),
                        new OperationFailedException(unknown.Code, $"{unknown.Message} (after the {StepName(step)} failed: {e.Message})", e));
                }
                if (probe.Switch != SwitchFinding.OnDestination)
                {
                    await RollBackAsync(e);
                    throw;
                }
                return took.Elapsed;
            }
        }

        /// <summary>Undoes the steps started before the point of no return, as the saga's rollback does, then lets the cause go on.</summary>
        private async Task RollBackAsync(Exception cause)
        {
            if (_started.Contains(MigrationStep.StartReplication))
            {
                try
                {
                    await StepAsync(MigrationStep.CancelReplication, CancellationToken.None);
                }
                catch (OperationFailedException e) when (e.Code is ErrorCodes.VmNotRunning or ErrorCodes.NoSuchJob or ErrorCodes.VmNotFound)
                {
                    // Nothing to cancel: the VM is gone or the mirror never started.
                }
                catch (OperationFailedException e)
                {
                    throw new OperationFailedException(e.Code,
                        $"rollback of image {Image} could not cancel the mirror ({e.Message}) after: {cause.Message}", cause);
                }
            }
            if (_started.Contains(MigrationStep.CloneImageStructure) || _started.Contains(MigrationStep.CreateVolumeCrossDomain))
            {
                try
                {
                    await StepAsync(MigrationStep.DeleteDestinationImage, CancellationToken.None);
                }
                catch (OperationFailedException e) when (e.Code is ErrorCodes.ImageNotFound)
                {
                    // Nothing was made there.
                }
            }
        }

        /// <summary>A step after the point of no return: retried with backoff, then the move is suspended with the VM on a valid chain.</summary>
        private async Task<StepOutcome> RollForwardAsync(MigrationStep step, CancellationToken ct, IProgress<CopyProgress>? copyProgress = null)
        {
            var delay = TimeSpan.FromMilliseconds(200);
            for (var i = 1; ; i++)
            {
                try
                {
                    return await StepAsync(step, ct, copyProgress);
                }
                catch (OperationFailedException e) when (i < options.RollForwardAttempts && e.Code != ErrorCodes.VmNotRunning)
                {
                    await Task.Delay(delay, ct);
                    delay *= 2;
                }
                catch (Exception e) when (e is OperationFailedException or OperationCanceledException)
                {
                    throw new MoveSuspendedException(StepName(step), e);
                }
            }
        }

        /// <summary>
        /// Waits for READY as the HSM does: the job is read (on entry, on an event, and between waits to show progress,
        /// as QEMU has no progress event), and <see cref="MirrorReadiness"/> says what it means; a background mirror that
        /// does not converge (<see cref="MirrorConvergence"/>) is started again write-blocking, and one that cannot fails the move.
        /// </summary>
        private async Task<BlockJobInfo> WaitForMirrorReadyAsync(CancellationToken ct)
        {
            _started.Add(MigrationStep.WaitMirrorReady);
            var watch = new MirrorConvergence(mover.ConvergenceWindow, mover.StallWindow);
            var mode = options.CopyMode;
            var wake = new TaskCompletionSource<MirrorEvent>(TaskCreationOptions.RunContinuationsAsynchronously);
            void OnEvent(HypervisorEvent e)
            {
                var meaning = MirrorReadiness.Read(e, vm, Image, replaced: mode != options.CopyMode);
                if (meaning.Error is not null || meaning.ReadJob) wake.TrySetResult(meaning);
            }
            mover._hypervisor.EventRaised += OnEvent;
            try
            {
                while (true)
                {
                    var job = await mover._hypervisor.GetBlockJobAsync(vm, Image, ct);
                    if (job is not null) Report("mirror", job.Offset, job.Length);
                    if (MirrorReadiness.Judge(vm, Image, job) is not null) return job!;
                    if (watch.Observe(MirrorConvergence.Now, job!, job!.Mode ?? mode) is { } verdict)
                    {
                        if (verdict.GivesUp) throw new OperationFailedException(ErrorCodes.MirrorNotConverging, verdict.Why);
                        mode = CopyMode.WriteBlocking;
                        var command = new ExecuteStep(new OperationId(migration, MigrationStep.WaitMirrorReady, Image, 1), vm, plan, Strategy,
                            options.SpeedBytesPerSecond, options.CopyMode);
                        var restarted = await mover._drive.RestartMirrorWriteBlockingAsync(command, ct);
                        Report("mirror-write-blocking", restarted.Offset, restarted.Length);
                        watch.Reset();
                        continue;
                    }
                    var woken = await Task.WhenAny(wake.Task, Task.Delay(TimeSpan.FromMilliseconds(250), ct));
                    ct.ThrowIfCancellationRequested();
                    if (woken != wake.Task) continue;
                    if (wake.Task.Result.Error is { } error) throw error;
                    wake = new TaskCompletionSource<MirrorEvent>(TaskCreationOptions.RunContinuationsAsynchronously);
                }
            }
            finally
            {
                mover._hypervisor.EventRaised -= OnEvent;
            }
        }

        private void Report(string step, long done, long total) => progress?.Report(new MoveProgress(Image, step, done, total));

        private IProgress<CopyProgress>? CopyProgressAs(string step) =>
            progress is null ? null : new InlineProgress<CopyProgress>(p => Report(step, p.Done, p.Total));

        private static string StepName(MigrationStep step) => step switch
        {
            MigrationStep.Pivot => "pivot",
            MigrationStep.LiveSnapshotToDestination => "live-snapshot",
            MigrationStep.MarkDestinationLeafLegal => "mark-destination-leaf-legal",
            MigrationStep.CloneInternalVolumes => "clone-internal-volumes",
            MigrationStep.SwitchBackingChain => "switch-backing-chain",
            MigrationStep.DeleteSourceImage => "delete-source-image",
            _ => step.ToString(),
        };
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
