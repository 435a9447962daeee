using Akka.Actor;
using Akka.Event;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Spm;
using LiveMigration.HostNode.Storage;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Hsm;

/// <summary>
/// The Host Storage Manager of one host (DESIGN §2): runs the HSM steps of the saga on this host's
/// hypervisor — mirror, wait for READY, pivot, cancel, live snapshot, backing switch. Each call runs
/// as a task piped back to the actor. Readiness comes from the hypervisor's pushed events (never a
/// polling timer): the event handler only tells the actor, the actor then reads the job once. Progress is
/// different: operators watch the bars move, so while a mirror is waited for and not READY the actor reads
/// the job about once a second and pushes <see cref="OperationProgress"/> to the waiters. On start
/// it adopts the VMs and block jobs a previous HostNode left running, and serves steps only after that.
/// A repeated operation id attaches or gets the same answer; an unknown one is redone, which the
/// idempotent hypervisor port answers from QEMU's state.
/// </summary>
public sealed class HsmActor : ReceiveActor, IWithUnboundedStash, IWithTimers
{
    /// <summary>How often a running mirror's progress is read and pushed to the saga.</summary>
    public static readonly TimeSpan ProgressInterval = TimeSpan.FromSeconds(1);

    private readonly IHypervisor _hypervisor;
    private readonly StoragePool _pool;
    private readonly OperationLedger _ledger = new();
    /// <summary>The WaitMirrorReady operations waiting for their drive's mirror to turn READY.</summary>
    private readonly Dictionary<OperationId, (VmId Vm, ImageId Drive)> _mirrorWaits = new();
    /// <summary>Mirror waits with a read of the job under way: a slow QMP answer does not pile up more reads.</summary>
    private readonly HashSet<OperationId> _sampling = [];
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private Action<HypervisorEvent>? _forwardEvent;

    public HsmActor(IHypervisor hypervisor, StoragePool pool)
    {
        _hypervisor = hypervisor;
        _pool = pool;
        Adopting();
    }

    public IStash Stash { get; set; } = null!;
    public ITimerScheduler Timers { get; set; } = null!;

    public static Props Props(IHypervisor hypervisor, StoragePool pool) =>
        Akka.Actor.Props.Create(() => new HsmActor(hypervisor, pool));

    /// <summary>The steps this actor runs; the others belong to the SPM.</summary>
    public static bool Runs(MigrationStep step) => step is MigrationStep.StartReplication or MigrationStep.WaitMirrorReady
        or MigrationStep.Pivot or MigrationStep.CancelReplication or MigrationStep.LiveSnapshotToDestination
        or MigrationStep.SwitchBackingChain;

    protected override void PreStart()
    {
        var self = Self;
        // Runs on the hypervisor's event thread: only a message crosses into the actor.
        _forwardEvent = e => self.Tell(new HypervisorEventArrived(e));
        _hypervisor.EventRaised += _forwardEvent;
        _hypervisor.AdoptRunningVmsAsync().PipeTo(self,
            success: vms => new AdoptionFinished(vms.Where(v => v.Running).Select(v => v.Id).ToList(), null),
            failure: e => new AdoptionFinished([], e));
    }

    protected override void PostStop()
    {
        if (_forwardEvent is not null) _hypervisor.EventRaised -= _forwardEvent;
    }

    private void Adopting()
    {
        Receive<AdoptionFinished>(done =>
        {
            if (done.Error is null)
                _log.Info("Adopted {Count} running VMs: {Vms}", done.Running.Count, string.Join(", ", done.Running));
            else
                // Serve anyway: each step then fails with the hypervisor's own code for the VM it names.
                _log.Error(done.Error, "Adopting the running VMs failed; serving steps without them");
            Become(Serving);
            Stash.UnstashAll();
        });
        ReceiveAny(_ => Stash.Stash());
    }

    private void Serving()
    {
        Receive<ExecuteStep>(OnExecuteStep);
        Receive<SetStepSpeed>(OnSetStepSpeed);
        Receive<HypervisorEventArrived>(e => OnHypervisorEvent(e.Event));
        Receive<MirrorSampled>(OnMirrorSampled);
        Receive<ProgressDue>(due =>
        {
            if (_mirrorWaits.ContainsKey(due.Operation) && !_sampling.Contains(due.Operation)) SampleMirror(due.Operation);
        });
        Receive<StepFinished>(OnFinished);
        Receive<SpeedSet>(s =>
        {
            if (s.Error is null) _log.Info("Speed of {Operation} set to {Speed} B/s", s.Operation, s.Speed);
            else _log.Warning("Setting the speed of {Operation} to {Speed} B/s failed: {Error}", s.Operation, s.Speed, s.Error.Message);
        });
    }

    private void OnExecuteStep(ExecuteStep command)
    {
        var operation = command.Operation;
        var sender = Sender;
        switch (_ledger.Admit(operation, sender, out var answer))
        {
            case OperationLedger.Admission.AlreadyAnswered:
                _log.Info("Answering repeated {Operation} with its remembered result", operation);
                sender.Tell(answer);
                return;
            case OperationLedger.Admission.Attached:
                _log.Info("Attaching {Sender} to running {Operation}", sender, operation);
                // A repeated wait doubles as a progress request: read the job once more.
                if (_mirrorWaits.ContainsKey(operation)) SampleMirror(operation);
                return;
        }

        if (!Runs(operation.Step) || operation.Image != command.Disk.Image)
        {
            Finish(operation, new OperationFailed(operation, ErrorCodes.InvalidArgument,
                $"the HSM does not run {operation.Step} for image {command.Disk.Image} (operation {operation})", Transient: false));
            return;
        }
        _log.Info("Starting {Operation} on VM {Vm} drive {Image}", operation, command.Vm, command.Disk.Image);
        if (operation.Step == MigrationStep.WaitMirrorReady)
        {
            _mirrorWaits[operation] = (command.Vm, command.Disk.Image);
            SampleMirror(operation);
            Timers.StartPeriodicTimer(ProgressTimer(operation), new ProgressDue(operation), ProgressInterval);
            return;
        }
        StepReplies.RunAsync(operation, () => RunAsync(command)).PipeTo(Self);
    }

    /// <summary>Reads the mirror once: on entry (READY may have come before we listened), on an event, on a repeated wait.</summary>
    private void SampleMirror(OperationId operation)
    {
        var (vm, drive) = _mirrorWaits[operation];
        _sampling.Add(operation);
        _hypervisor.GetBlockJobAsync(vm, drive).PipeTo(Self,
            success: job => new MirrorSampled(operation, job, null),
            failure: e => new MirrorSampled(operation, null, e));
    }

    private void OnMirrorSampled(MirrorSampled sample)
    {
        var operation = sample.Operation;
        _sampling.Remove(operation);
        if (!_mirrorWaits.TryGetValue(operation, out var wait)) return;
        if (sample.Error is not null)
        {
            Finish(operation, StepReplies.Failed(operation, sample.Error));
            return;
        }
        switch (sample.Job)
        {
            case null:
                Finish(operation, new OperationFailed(operation, ErrorCodes.NoSuchJob,
                    $"drive {wait.Drive} of VM {wait.Vm} has no mirror to wait for", Transient: false));
                break;
            case { Phase: BlockJobPhase.Ready } job:
                Progress(operation, job);
                Finish(operation, new OperationSucceeded(operation, new StepOutcome(job.Length, $"mirror {job.JobId} READY at {job.Offset} of {job.Length} bytes")));
                break;
            case { Phase: BlockJobPhase.Failed or BlockJobPhase.Cancelled } job:
                Finish(operation, new OperationFailed(operation, ErrorCodes.JobFailed,
                    $"the mirror {job.JobId} of drive {wait.Drive} on VM {wait.Vm} ended {job.Phase}: {job.Error}", Transient: false));
                break;
            case var job:
                Progress(operation, job);
                break;
        }
    }

    private void OnHypervisorEvent(HypervisorEvent e)
    {
        foreach (var (operation, wait) in _mirrorWaits.Where(w => w.Value.Vm == e.Vm).ToList())
        {
            switch (e)
            {
                case VmStopped stopped:
                    Finish(operation, new OperationFailed(operation, ErrorCodes.VmNotRunning,
                        $"VM {e.Vm} stopped while its drive {wait.Drive} was mirrored: {stopped.Reason}", Transient: false));
                    break;
                case BlockJobFailed failed when failed.Drive == wait.Drive:
                    Finish(operation, new OperationFailed(operation, ErrorCodes.JobFailed,
                        $"the mirror {failed.JobId} of drive {wait.Drive} on VM {e.Vm} failed: {failed.Error}", Transient: false));
                    break;
                case BlockJobCancelled cancelled when cancelled.Drive == wait.Drive:
                    Finish(operation, new OperationFailed(operation, ErrorCodes.JobFailed,
                        $"the mirror {cancelled.JobId} of drive {wait.Drive} on VM {e.Vm} was cancelled", Transient: false));
                    break;
                case BlockJobReady ready when ready.Drive == wait.Drive:
                    // The event has no counters: read them, and answer from what QEMU says now.
                    SampleMirror(operation);
                    break;
            }
        }
    }

    private void Progress(OperationId operation, BlockJobInfo job)
    {
        foreach (var waiter in _ledger.WaitersOf(operation))
            waiter.Tell(new OperationProgress(operation, job.Offset, job.Length));
    }

    private void OnSetStepSpeed(SetStepSpeed command)
    {
        // Found from QEMU's state, not from memory, so it works for a job a previous instance started.
        // No reply on success: an answer under the step's operation id would read as the step's own result.
        var image = command.Operation.Image;
        var hypervisor = _hypervisor;
        SetSpeedAsync(hypervisor, image, command.SpeedBytesPerSecond).PipeTo(Self,
            success: () => new SpeedSet(command.Operation, command.SpeedBytesPerSecond, null),
            failure: e => new SpeedSet(command.Operation, command.SpeedBytesPerSecond, e));
    }

    private static async Task SetSpeedAsync(IHypervisor hypervisor, ImageId image, long speed)
    {
        var vms = await hypervisor.ListVmsAsync();
        var vm = vms.FirstOrDefault(v => v.Running && v.Drives.Any(d => d.Image == image))
                 ?? throw new OperationFailedException(ErrorCodes.VmNotFound, $"no running VM on this host has a drive for image {image}");
        await hypervisor.SetJobSpeedAsync(vm.Id, image, speed);
    }

    private void OnFinished(StepFinished finished)
    {
        StepReplies.Announce(finished, _log, Context.System.EventStream);
        Finish(finished.Operation, finished.Reply);
    }

    private void Finish(OperationId operation, IHostReply reply)
    {
        if (_mirrorWaits.Remove(operation)) Timers.Cancel(ProgressTimer(operation));
        foreach (var waiter in _ledger.Finish(operation, reply)) waiter.Tell(reply);
    }

    /// <summary>The step's hypervisor work, as DiskMover does it on one host. Runs off the actor: touches no actor state.</summary>
    private async Task<StepOutcome> RunAsync(ExecuteStep command)
    {
        var vm = command.Vm;
        var image = command.Disk.Image;
        var dst = _pool.Get(command.Disk.Destination);
        switch (command.Operation.Step)
        {
            case MigrationStep.StartReplication:
            {
                var leaf = (await dst.DescribeImageAsync(image)).Leaf;
                var job = await _hypervisor.StartMirrorAsync(new MirrorRequest(vm, image,
                    new ChainLayer(new VolumeRef(dst.Id, leaf.Id), dst.Locate(image, leaf.Id), leaf.Format),
                    command.SpeedBytesPerSecond, command.CopyMode));
                return new StepOutcome(Detail: $"mirror {job.JobId} {job.Phase} into leaf {leaf.Id} on domain {dst.Id}");
            }
            case MigrationStep.Pivot:
            {
                var destination = await _pool.ResolveChainAsync(dst.Id, image);
                var drive = await _hypervisor.PivotAsync(vm, image, destination.Backing);
                EnsureRunsOn(drive, destination, vm);
                return new StepOutcome(Detail: $"VM {vm} drive {image} runs on domain {dst.Id}");
            }
            case MigrationStep.CancelReplication:
            {
                var drive = await _hypervisor.CancelMirrorAsync(vm, image);
                return new StepOutcome(Detail: $"VM {vm} drive {image} runs on {drive.OpenChain.LastOrDefault() ?? "nothing"}");
            }
            case MigrationStep.LiveSnapshotToDestination:
            {
                var newLeaf = await dst.DescribeVolumeAsync(image, command.Disk.NewLeaf);
                var path = dst.Locate(image, newLeaf.Id);
                var drive = await _hypervisor.LiveSnapshotAsync(vm, image, new ChainLayer(new VolumeRef(dst.Id, newLeaf.Id), path, newLeaf.Format));
                if (drive.OpenChain.Count == 0 || drive.OpenChain[^1] != path)
                    throw new OperationFailedException(ErrorCodes.Conflict,
                        $"VM {vm} drive {image} writes on {drive.OpenChain.LastOrDefault() ?? "nothing"} after the snapshot, expected {path}");
                return new StepOutcome(Detail: $"VM {vm} drive {image} writes on leaf {newLeaf.Id} on domain {dst.Id}");
            }
            case MigrationStep.SwitchBackingChain:
            {
                // The SPM pointed the new leaf's metadata at the copy (CloneInternalVolumes); follow it.
                var newLeaf = await dst.DescribeVolumeAsync(image, command.Disk.NewLeaf);
                if (newLeaf.Parent is not { } parent || parent.Domain != dst.Id)
                    throw new OperationFailedException(ErrorCodes.Conflict,
                        $"leaf {newLeaf.Id} of image {image} has parent {newLeaf.Parent?.ToString() ?? "none"}, not a copy on domain {dst.Id}: the internal volumes are not cloned yet");
                var copy = await _pool.ResolveChainAsync(await dst.DescribeVolumeAsync(image, parent.Volume));
                var drive = await _hypervisor.SwitchBackingChainAsync(vm, image, copy.Layers);
                EnsureRunsOn(drive, await _pool.ResolveChainAsync(dst.Id, image), vm);
                return new StepOutcome(Detail: $"VM {vm} drive {image} runs on domain {dst.Id} only");
            }
            default:
                throw new OperationFailedException(ErrorCodes.InvalidArgument, $"the HSM does not run {command.Operation.Step}");
        }
    }

    private static void EnsureRunsOn(DriveState drive, DriveChain expected, VmId vm)
    {
        var want = expected.Layers.Select(l => l.Path).ToList();
        if (!drive.OpenChain.SequenceEqual(want))
            throw new OperationFailedException(ErrorCodes.Conflict,
                $"VM {vm} drive {drive.Image} runs on [{string.Join(", ", drive.OpenChain)}], expected [{string.Join(", ", want)}]");
    }

    private static string ProgressTimer(OperationId operation) => $"progress-{operation}";

    private sealed record ProgressDue(OperationId Operation);
    private sealed record AdoptionFinished(IReadOnlyList<VmId> Running, Exception? Error);
    private sealed record HypervisorEventArrived(HypervisorEvent Event);
    private sealed record MirrorSampled(OperationId Operation, BlockJobInfo? Job, Exception? Error);
    private sealed record SpeedSet(OperationId Operation, long Speed, Exception? Error);
}
