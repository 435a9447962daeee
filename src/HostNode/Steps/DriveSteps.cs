using LiveMigration.HostNode.Concurrency;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Steps;

/// <summary>
/// The hypervisor side of every step (DESIGN §3) on the VM's host — mirror, pivot, cancel, live snapshot, backing switch,
/// and the read-only probe of a switch in doubt — in this one place, for the HSM actor and <c>DiskMover</c> alike. A
/// switch writes its intent and its outcome in the host's VM record through <see cref="Records"/>. Waiting for the
/// mirror to be READY is the callers' own (the actor listens without blocking); what a job's state means is
/// <see cref="MirrorReadiness"/>'s. Each call is idempotent through the hypervisor port, which answers from QEMU's state.
/// </summary>
public sealed class DriveSteps(IHypervisor hypervisor, StoragePool pool, DriveRecords records)
{
    /// <summary>How long a probe lets a begun pivot's mirror end before it asks to be sent again.</summary>
    private static readonly TimeSpan ProbeJobWait = TimeSpan.FromSeconds(20);

    /// <summary>
    /// One gate per drive for what starts, replaces or ends its mirror, switches it, or probes a switch: a mirror started
    /// again write-blocking (a cancel and a start) must not interleave with the saga's cancel or pivot of the same drive,
    /// or a cancel could land between the two and leave a new mirror running for nobody; and a probe and a late copy of
    /// the switch it asks about each see what the other did (the probe fences the switch it answers did not happen).
    /// Static: a step a restarted HSM actor left running still holds it.
    /// </summary>
    private static readonly KeyedLocks<(VmId, ImageId)> DriveGates = new();

    public DriveRecords Records => records;

    /// <summary>The steps that run on the VM's host; the others run on storage (<see cref="StorageSteps"/>).</summary>
    public static bool Runs(MigrationStep step) => step is MigrationStep.StartReplication or MigrationStep.WaitMirrorReady
        or MigrationStep.Pivot or MigrationStep.CancelReplication or MigrationStep.LiveSnapshotToDestination
        or MigrationStep.SwitchBackingChain or MigrationStep.ProbeSwitch;

    /// <summary>Runs the step's hypervisor work (every step but <see cref="MigrationStep.WaitMirrorReady"/>, which the caller waits for).</summary>
    public async Task<StepOutcome> RunAsync(ExecuteStep command, CancellationToken ct = default)
    {
        var vm = command.Vm;
        var image = command.Disk.Image;
        var step = command.Operation.Step;
        var dst = pool.Get(command.Disk.Destination);
        // A late mirror or switch of a migration whose copy the SPM already undid there changes nothing (DESIGN §7.7).
        if (step is MigrationStep.StartReplication or MigrationStep.Pivot or MigrationStep.LiveSnapshotToDestination or MigrationStep.SwitchBackingChain
            && await dst.HasMigrationMarkAsync(command.Operation.Migration, command.Disk.Image, MigrationMark.Ended, ct))
            throw new OperationFailedException(ErrorCodes.MigrationEnded,
                $"migration {command.Operation.Migration} ended on domain {dst.Id} with its copy undone: this late {step} changes nothing");
        if (step is not (MigrationStep.StartReplication or MigrationStep.Pivot or MigrationStep.CancelReplication
            or MigrationStep.LiveSnapshotToDestination or MigrationStep.ProbeSwitch))
            return await RunOnDriveAsync(command, dst, ct);
        using (await DriveGates.LockAsync((vm, image), ct))
            return await RunOnDriveAsync(command, dst, ct);
    }

    private async Task<StepOutcome> RunOnDriveAsync(ExecuteStep command, IStorageDomain dst, CancellationToken ct)
    {
        var vm = command.Vm;
        var image = command.Disk.Image;
        var step = command.Operation.Step;
        switch (step)
        {
            case MigrationStep.StartReplication:
            {
                var leaf = await MirrorTargetAsync(command, dst, ct);
                var job = await hypervisor.StartMirrorAsync(new MirrorRequest(vm, image, leaf, command.SpeedBytesPerSecond, command.CopyMode), ct);
                return new StepOutcome(Detail: $"mirror {job.JobId} {job.Phase} into leaf {leaf.Volume.Volume} on domain {dst.Id}");
            }
            case MigrationStep.Pivot:
            {
                await RequireOwnMirrorAsync(command, dst, ErrorCodes.Conflict, ct);
                var leaf = await PlannedLeaves.DestinationLeafAsync(command.Disk, command.Strategy, dst, ct);
                var destination = await pool.ResolveChainAsync(leaf, ct);
                var target = new VolumeRef(dst.Id, leaf.Id);
                records.RequireNotFenced(vm, image, command.Operation.Migration);
                // The intent first: a host or QEMU that dies mid-pivot leaves a record that says a switch was begun.
                await records.BeginSwitchAsync(vm, image, target, ct);
                var drive = await records.SettlingOnFailureAsync(vm, image, () => hypervisor.PivotAsync(vm, image, destination.Backing, ct), ct);
                EnsureRunsOn(drive, destination, vm);
                await records.RecordLeafAsync(vm, image, target, ct);
                return new StepOutcome(Detail: $"VM {vm} drive {image} runs on domain {dst.Id}", SwitchStallMs: StallMs(drive));
            }
            case MigrationStep.CancelReplication:
            {
                // Another migration's mirror is none of this one's to cancel: nothing to undo here (NO_SUCH_JOB).
                await RequireOwnMirrorAsync(command, dst, ErrorCodes.NoSuchJob, ct);
                var drive = await hypervisor.CancelMirrorAsync(vm, image, ct);
                return new StepOutcome(Detail: $"VM {vm} drive {image} runs on {drive.OpenChain.LastOrDefault() ?? "nothing"}");
            }
            case MigrationStep.LiveSnapshotToDestination:
            {
                var newLeaf = await dst.DescribeVolumeAsync(image, command.Disk.NewLeaf, ct);
                var path = dst.Locate(image, newLeaf.Id);
                var target = new VolumeRef(dst.Id, newLeaf.Id);
                if (command.Disk.MakesWhole)
                    return await FoundOnSplitLeafAsync(vm, image, path, target, ct);
                records.RequireNotFenced(vm, image, command.Operation.Migration);
                await records.BeginSwitchAsync(vm, image, target, ct);
                var drive = await records.SettlingOnFailureAsync(vm, image,
                    () => hypervisor.LiveSnapshotAsync(vm, image, new ChainLayer(target, path, newLeaf.Format), ct), ct);
                if (drive.OpenChain.Count == 0 || drive.OpenChain[^1] != path)
                    throw new OperationFailedException(ErrorCodes.Conflict,
                        $"VM {vm} drive {image} writes on {drive.OpenChain.LastOrDefault() ?? "nothing"} after the snapshot, expected {path}");
                await records.RecordLeafAsync(vm, image, target, ct);
                return new StepOutcome(Detail: $"VM {vm} drive {image} writes on leaf {newLeaf.Id} on domain {dst.Id}", SwitchStallMs: StallMs(drive));
            }
            case MigrationStep.SwitchBackingChain:
            {
                // The SPM pointed the new leaf's metadata at the copy (CloneInternalVolumes); follow it.
                var newLeaf = await dst.DescribeVolumeAsync(image, command.Disk.NewLeaf, ct);
                if (newLeaf.Parent is not { } parent || parent.Domain != dst.Id)
                    throw new OperationFailedException(ErrorCodes.Conflict,
                        $"leaf {newLeaf.Id} of image {image} has parent {newLeaf.Parent?.ToString() ?? "none"}, not a copy on domain {dst.Id}: the internal volumes are not cloned yet");
                var copy = await pool.ResolveChainAsync(await dst.DescribeVolumeAsync(image, parent.Volume, ct), ct);
                var drive = await hypervisor.SwitchBackingChainAsync(vm, image, copy.Layers, ct);
                EnsureRunsOn(drive, await pool.ResolveChainAsync(newLeaf, ct), vm);
                await records.RecordLeafAsync(vm, image, new VolumeRef(dst.Id, newLeaf.Id), ct);
                return new StepOutcome(Detail: $"VM {vm} drive {image} runs on domain {dst.Id} only", SwitchStallMs: StallMs(drive));
            }
            case MigrationStep.ProbeSwitch:
                return await ProbeSwitchAsync(command, dst, ct);
            default:
                throw new OperationFailedException(ErrorCodes.InvalidArgument, $"the VM's host does not run {step} this way");
        }
    }

    /// <summary>
    /// The live snapshot of a move that makes a split chain whole: the drive writes on the leaf since the abandoned post-copy's
    /// snapshot, so nothing is switched; it is only confirmed (and recorded). A drive found elsewhere is refused, never
    /// snapshotted onto that leaf: the leaf holds the guest's writes over the older layers, not over whatever runs now.
    /// </summary>
    private async Task<StepOutcome> FoundOnSplitLeafAsync(VmId vm, ImageId image, string path, VolumeRef target, CancellationToken ct)
    {
        var info = await hypervisor.DescribeVmAsync(vm, ct);
        if (!info.Running)
            throw new OperationFailedException(ErrorCodes.VmNotRunning, $"VM {vm} is not running: its split chain is made whole only while it runs");
        var drive = info.Drive(image);
        if (drive.Job is not null)
            throw new OperationFailedException(ErrorCodes.Conflict, $"VM {vm} drive {image} has a block job running: not the split chain a move may make whole now");
        var open = drive.OpenChain;
        if (open.Count == 0 || open[^1] != path)
            throw new OperationFailedException(ErrorCodes.Conflict,
                $"VM {vm} drive {image} writes on {open.LastOrDefault() ?? "nothing"}, not on leaf {target}: this is not the split chain the move was planned for");
        await records.RecordLeafAsync(vm, image, target, ct);
        return new StepOutcome(Detail: $"VM {vm} drive {image} writes on leaf {target.Volume} on domain {target.Domain} already (since the abandoned post-copy's snapshot)");
    }

    /// <summary>
    /// Starts the drive's mirror again, write-blocking, into the same destination leaf at the running job's speed: the
    /// way out for a background mirror that does not converge (<see cref="MirrorConvergence"/>), as QEMU before 8.2
    /// cannot change a running job's copy mode. The background job is cancelled first (the drive stays on its source
    /// chain, where it always ran). Nothing is lost by starting over: the new job copies every area the source's active
    /// layer holds, which covers everything the first job wrote (a qcow2 overlay's clusters stay allocated while it is
    /// the active layer: a discard leaves a zero cluster), and the leaf is LEGAL only after a pivot. Returns the running
    /// job, or a READY one untouched when it converged meanwhile.
    /// </summary>
    public async Task<BlockJobInfo> RestartMirrorWriteBlockingAsync(ExecuteStep command, CancellationToken ct = default)
    {
        var vm = command.Vm;
        var image = command.Disk.Image;
        using (await DriveGates.LockAsync((vm, image), ct))
            return await RestartUnderGateAsync(command, vm, image, ct);
    }

    private async Task<BlockJobInfo> RestartUnderGateAsync(ExecuteStep command, VmId vm, ImageId image, CancellationToken ct)
    {
        var dst = pool.Get(command.Disk.Destination);
        if (await dst.HasMigrationMarkAsync(command.Operation.Migration, command.Disk.Image, MigrationMark.Ended, ct))
            throw new OperationFailedException(ErrorCodes.MigrationEnded,
                $"migration {command.Operation.Migration} ended on domain {dst.Id} with its copy undone: its mirror is not started again");
        var running = await hypervisor.GetBlockJobAsync(vm, image, ct)
            ?? throw new OperationFailedException(ErrorCodes.NoSuchJob, $"drive {image} of VM {vm} has no mirror to start again");
        await RequireOwnMirrorAsync(command, dst, ErrorCodes.Conflict, ct);
        if (running.Phase != BlockJobPhase.Running || running.Mode == CopyMode.WriteBlocking) return running;
        var leaf = await MirrorTargetAsync(command, dst, ct);
        await hypervisor.CancelMirrorAsync(vm, image, ct);
        return await hypervisor.StartMirrorAsync(new MirrorRequest(vm, image, leaf, running.SpeedBytesPerSecond, CopyMode.WriteBlocking), ct);
    }

    /// <summary>The destination leaf a pre-copy mirror writes, as the hypervisor opens it.</summary>
    /// <summary>
    /// A pivot, a cancel or a restart acts only on the mirror this migration started, writing into its planned leaf: a
    /// late command of an earlier migration of the same disk (at a host that restarted and forgot answering it) must not
    /// complete, end or restart the mirror of the migration moving the disk now. The leaf by its planned id: a cancel may
    /// come after the rollback's delete began.
    /// </summary>
    private async Task RequireOwnMirrorAsync(ExecuteStep command, IStorageDomain dst, string code, CancellationToken ct)
    {
        if (await hypervisor.MirrorTargetAsync(command.Vm, command.Disk.Image, ct) is not { } writing) return;
        var image = command.Disk.Image;
        var migration = command.Operation.Migration;
        var leaf = await PlannedLeaves.DestinationLeafIdAsync(command.Disk, command.Strategy, dst, ct);
        var own = dst.Locate(image, leaf);
        // Two pre-copies of a disk from the same leaf to the same domain write the same path (a twin keeps its volume's
        // id): the leaf's owner tells them apart. A leaf already gone tells nothing, and a mirror of its own is let be cancelled.
        VolumeOwner? owner = null;
        if (writing == own)
        {
            VolumeInfo? planned;
            try
            {
                planned = await PlannedLeaves.FindDestinationLeafAsync(command.Disk, command.Strategy, dst, ct);
            }
            catch (OperationFailedException e) when (e.Code is ErrorCodes.IoError && command.Operation.Step == MigrationStep.CancelReplication)
            {
                // The destination cannot be read from here (unmounted): a cancel deletes nothing, and a mirror left running
                // into it (a write-blocking one holding the guest's writes) helps nobody. A pivot onto it waits.
                return;
            }
            if (planned is null) return;
            owner = planned.Owner;
        }
        if (writing != own || owner is { } o && o.Migration != migration)
            throw new OperationFailedException(code,
                $"VM {command.Vm} drive {image} mirrors into {writing} (made by {owner?.ToString() ?? "another migration"}), not into the leaf migration " +
                $"{migration} copies it to: that mirror is another migration's, and this {command.Operation.Step} leaves it alone");
    }

    private static async Task<ChainLayer> MirrorTargetAsync(ExecuteStep command, IStorageDomain dst, CancellationToken ct)
    {
        var leaf = await PlannedLeaves.DestinationLeafAsync(command.Disk, command.Strategy, dst, ct);
        return new ChainLayer(new VolumeRef(dst.Id, leaf.Id), dst.Locate(command.Disk.Image, leaf.Id), leaf.Format);
    }

    /// <summary>The switch's hold on the drive as the adapter timed it, rounded to 0.1 ms; null when this call found it done.</summary>
    private static double? StallMs(DriveState drive) =>
        drive.SwitchDuration is { } took ? Math.Round(took.TotalMilliseconds, 1) : null;

    /// <summary>
    /// DESIGN §7.4, read-only: after a switch whose outcome is unknown, where does the drive run? QEMU's open chain
    /// when it runs; the host's durable record when it is gone. A live snapshot's new leaf is an overlay of the
    /// source leaf, so once begun it holds every write whether or not QEMU got to switch. A begun pivot with QEMU
    /// gone is decided by comparing both leaves; if they differ nobody can tell, and the step fails for an operator.
    /// </summary>
    private async Task<StepOutcome> ProbeSwitchAsync(ExecuteStep command, IStorageDomain dst, CancellationToken ct)
    {
        var vm = command.Vm;
        var image = command.Disk.Image;
        var preCopy = command.Strategy == MigrationStrategy.PreCopy;
        var switchName = preCopy ? "pivot" : "live snapshot";
        // The leaf by its planned id, not read from the domain: a probe before a paused rollback goes on may come after
        // its delete removed the copy (a drive cannot run on a volume that is not there, so the answer still holds).
        var leaf = await PlannedLeaves.DestinationLeafIdAsync(command.Disk, command.Strategy, dst, ct);
        var target = new VolumeRef(dst.Id, leaf);
        var targetPath = dst.Locate(image, leaf);

        VmInfo? running = null;
        try
        {
            var info = await hypervisor.DescribeVmAsync(vm, ct);
            if (info.Running) running = info;
        }
        catch (OperationFailedException e) when (e.Code is ErrorCodes.VmNotRunning or ErrorCodes.VmNotFound)
        {
        }
        if (running is not null && running.Drive(image).Job is not null && records.PendingOf(vm, image) is not null)
        {
            // A pivot was begun and the mirror has not ended: block-job-complete may still be converging. Let it end
            // (or not) before reading where the drive runs; answering now could roll back under a pivot that lands later.
            var deadline = DateTime.UtcNow + ProbeJobWait;
            while (await hypervisor.GetBlockJobAsync(vm, image, ct) is not null && DateTime.UtcNow < deadline)
                await Task.Delay(200, ct);
            running = await hypervisor.DescribeVmAsync(vm, ct);
            if (running.Drive(image).Job is { } still)
                throw new OperationFailedException(ErrorCodes.Timeout,
                    $"VM {vm} drive {image}: the {switchName} was begun and mirror {still.JobId} has not ended after {ProbeJobWait.TotalSeconds:0} s; probing again");
        }
        if (running is not null)
        {
            var open = running.Drive(image).OpenChain;
            if (open.Count > 0 && open[^1] == targetPath)
            {
                await records.RecordLeafAsync(vm, image, target, ct);
                return Found(SwitchFinding.OnDestination, $"VM {vm} drive {image} runs on {targetPath}: the {switchName} took effect");
            }
            records.ClearSwitch(vm, image);
            return await OnSourceAsync(command, ct, $"VM {vm} drive {image} runs on {open.LastOrDefault() ?? "nothing"}: the {switchName} did not take effect");
        }

        var record = records.Catalog?.Find(vm)
            ?? throw new OperationFailedException(ErrorCodes.SwitchOutcomeUnknown,
                $"VM {vm} is not running and this host keeps no record of it: the outcome of the {switchName} of drive {image} is unknown");
        if (record.LeafOf(image)?.Leaf == target)
            return Found(SwitchFinding.OnDestination, $"VM {vm} is not running; its record names {target} after the {switchName}");
        if (record.PendingOf(image) is null)
            return await OnSourceAsync(command, ct, $"VM {vm} is not running; its record shows the {switchName} of drive {image} was never begun");
        // Gone only if the rollback's delete ran (its mark: a later switch is refused) and the leaf is not there: not seeing
        // the leaf alone may be an unreadable mount, and the mark alone stays where a delete met the copy in use.
        if (await dst.HasMigrationMarkAsync(command.Operation.Migration, image, MigrationMark.Ended, ct)
            && await PlannedLeaves.FindDestinationLeafAsync(command.Disk, command.Strategy, dst, ct) is null)
        {
            records.ClearSwitch(vm, image);
            return await OnSourceAsync(command, ct,
                $"VM {vm} is not running and the rollback already deleted the destination of its begun {switchName} ({target}): only the source chain remains");
        }
        if (!preCopy)
        {
            await records.RecordLeafAsync(vm, image, target, ct);
            return Found(SwitchFinding.OnDestination,
                $"VM {vm} died during the live snapshot of drive {image}: the new leaf {target} over the source chain holds every write either way");
        }
        var source = pool.Get(command.Disk.Source);
        var sourceLeaf = command.Disk.SourceLeaf ?? leaf;
        if (source.Kind == FileStorageDomain.FileKind && dst.Kind == FileStorageDomain.FileKind)
        {

            var (same, output) = await QemuImg.CompareAsync(source.Locate(image, sourceLeaf), null, targetPath, null, CancellationToken.None);
            if (same)
            {
                records.ClearSwitch(vm, image);
                return await OnSourceAsync(command, ct,
                    $"VM {vm} died during the pivot of drive {image}, but source and destination hold the same data: the source chain is complete");
            }
            throw new OperationFailedException(ErrorCodes.SwitchOutcomeUnknown,
                $"VM {vm} died during the pivot of drive {image} and the source and destination leaves differ ({output}): " +
                $"which one holds the last writes cannot be told; both are kept");
        }
        throw new OperationFailedException(ErrorCodes.SwitchOutcomeUnknown,
            $"VM {vm} died during the pivot of drive {image}: the outcome cannot be told on {source.Kind} domains; both chains are kept");
    }

    private static StepOutcome Found(SwitchFinding finding, string detail) => new(Detail: detail, Switch: finding);

    /// <summary>The probe's "never took effect", fenced first: the saga rolls back from it, so that switch must never land later.</summary>
    private async Task<StepOutcome> OnSourceAsync(ExecuteStep command, CancellationToken ct, string detail)
    {
        records.FenceSwitch(command.Vm, command.Disk.Image, command.Operation.Migration);
        return Found(SwitchFinding.OnSource, detail);
    }

    private static void EnsureRunsOn(DriveState drive, DriveChain expected, VmId vm)
    {
        var want = expected.Layers.Select(l => l.Path).ToList();
        if (!drive.OpenChain.SequenceEqual(want))
            throw new OperationFailedException(ErrorCodes.Conflict,
                $"VM {vm} drive {drive.Image} runs on [{string.Join(", ", drive.OpenChain)}], expected [{string.Join(", ", want)}]");
    }
}
