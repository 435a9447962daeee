using Akka.Actor;
using Akka.Event;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Management;
using LiveMigration.HostNode.Spm;
using LiveMigration.HostNode.Storage;
using LiveMigration.Shared.Hosting;
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
    /// <summary>The host's durable VM records (DESIGN §7.1); null on a host without management (in-process tests).</summary>
    private readonly VmCatalog? _catalog;
    private readonly OperationLedger _ledger = new();
    /// <summary>The WaitMirrorReady operations waiting for their drive's mirror to turn READY.</summary>
    private readonly Dictionary<OperationId, (VmId Vm, ImageId Drive)> _mirrorWaits = new();
    /// <summary>Mirror waits with a read of the job under way: a slow QMP answer does not pile up more reads.</summary>
    private readonly HashSet<OperationId> _sampling = [];
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private Action<HypervisorEvent>? _forwardEvent;

    public HsmActor(IHypervisor hypervisor, StoragePool pool, VmCatalog? catalog = null)
    {
        _hypervisor = hypervisor;
        _pool = pool;
        _catalog = catalog;
        Adopting();
    }

    public IStash Stash { get; set; } = null!;
    public ITimerScheduler Timers { get; set; } = null!;

    public static Props Props(IHypervisor hypervisor, StoragePool pool, VmCatalog? catalog = null) =>
        Akka.Actor.Props.Create(() => new HsmActor(hypervisor, pool, catalog));

    /// <summary>The steps this actor runs; the others belong to the SPM.</summary>
    public static bool Runs(MigrationStep step) => step is MigrationStep.StartReplication or MigrationStep.WaitMirrorReady
        or MigrationStep.Pivot or MigrationStep.CancelReplication or MigrationStep.LiveSnapshotToDestination
        or MigrationStep.SwitchBackingChain or MigrationStep.ProbeSwitch;

    protected override void PreStart()
    {
        var self = Self;
        // Runs on the hypervisor's event thread: only a message crosses into the actor.
        _forwardEvent = e => self.Tell(new HypervisorEventArrived(e));
        _hypervisor.EventRaised += _forwardEvent;
        AdoptAsync().PipeTo(self,
            success: done => done,
            failure: e => new AdoptionFinished([], [], e));
    }

    protected override void PostStop()
    {
        if (_forwardEvent is not null) _hypervisor.EventRaised -= _forwardEvent;
    }

    private void Adopting()
    {
        Receive<AdoptionFinished>(done =>
        {
            foreach (var disagreement in done.Disagreements)
                _log.Warning("Reconciling the VM records with QEMU: {Disagreement}", disagreement);
            if (done.Error is null)
                _log.Info("Adopted {Count} running VMs: {Vms}", done.Running.Count, string.Join(", ", done.Running));
            else
                // Serve anyway: each step then fails with the hypervisor's own code for the VM it names.
                _log.Error(done.Error, "Adopting the running VMs failed; serving steps without them");
            // The host's first reports may have gone out before the adoption knew its VMs: report again now.
            Context.System.EventStream.Publish(new Inventory.HostInventoryChanged($"adopted {done.Running.Count} running VMs"));
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
            FaultPlan.Current.Hit(operation.Step, FaultMoment.HostReceived, KillQemuOf(command.Vm));
            _mirrorWaits[operation] = (command.Vm, command.Disk.Image);
            SampleMirror(operation);
            Timers.StartPeriodicTimer(ProgressTimer(operation), new ProgressDue(operation), ProgressInterval);
            return;
        }
        StepReplies.RunAsync(operation, () => RunAsync(command), KillQemuOf(command.Vm)).PipeTo(Self);
    }

    /// <summary>The fault plan's way to kill this step's QEMU (tests only).</summary>
    private Action KillQemuOf(VmId vm)
    {
        var hypervisor = _hypervisor;
        return () =>
        {
            var pid = hypervisor.ListVmsAsync().GetAwaiter().GetResult().FirstOrDefault(v => v.Id == vm)?.Pid;
            if (pid is not { } p) return;
            try
            {
                System.Diagnostics.Process.GetProcessById(p).Kill();
            }
            catch (ArgumentException)
            {
                // gone already
            }
        };
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
        if (e is BlockJobCompleted && _catalog is not null)
        {
            // A mirror that completed moved the drive: the record follows, even when no step is waiting for it.
            var log = _log;
            _hypervisor.DescribeVmAsync(e.Vm).ContinueWith(async t =>
            {
                if (t.IsCompletedSuccessfully && t.Result.Running)
                    foreach (var disagreement in await ReconcileRecordAsync(t.Result))
                        log.Warning("After a block job ended: {Disagreement}", disagreement);
            }).Unwrap();
        }
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
        // A late mirror or switch of a migration whose copy the SPM already undid there changes nothing (DESIGN §7.7).
        if (command.Operation.Step is MigrationStep.StartReplication or MigrationStep.Pivot or MigrationStep.LiveSnapshotToDestination
                or MigrationStep.SwitchBackingChain
            && await dst.HasMigrationEndedAsync(command.Operation.Migration))
            throw new OperationFailedException(ErrorCodes.MigrationEnded,
                $"migration {command.Operation.Migration} ended on domain {dst.Id} with its copy undone: this late {command.Operation.Step} changes nothing");
        switch (command.Operation.Step)
        {
            case MigrationStep.StartReplication:
            {
                var leaf = await DestinationLeafAsync(command, dst);
                var job = await _hypervisor.StartMirrorAsync(new MirrorRequest(vm, image,
                    new ChainLayer(new VolumeRef(dst.Id, leaf.Id), dst.Locate(image, leaf.Id), leaf.Format),
                    command.SpeedBytesPerSecond, command.CopyMode));
                return new StepOutcome(Detail: $"mirror {job.JobId} {job.Phase} into leaf {leaf.Id} on domain {dst.Id}");
            }
            case MigrationStep.Pivot:
            {
                var leaf = await DestinationLeafAsync(command, dst);
                var destination = await _pool.ResolveChainAsync(leaf);
                var target = new VolumeRef(dst.Id, leaf.Id);
                // The intent first: a host or QEMU that dies mid-pivot leaves a record that says a switch was begun.
                await BeginSwitchAsync(vm, image, target);
                var drive = await SettlingOnFailureAsync(vm, image, () => _hypervisor.PivotAsync(vm, image, destination.Backing));
                EnsureRunsOn(drive, destination, vm);
                await RecordLeafAsync(vm, image, target);
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
                var target = new VolumeRef(dst.Id, newLeaf.Id);
                await BeginSwitchAsync(vm, image, target);
                var drive = await SettlingOnFailureAsync(vm, image,
                    () => _hypervisor.LiveSnapshotAsync(vm, image, new ChainLayer(target, path, newLeaf.Format)));
                if (drive.OpenChain.Count == 0 || drive.OpenChain[^1] != path)
                    throw new OperationFailedException(ErrorCodes.Conflict,
                        $"VM {vm} drive {image} writes on {drive.OpenChain.LastOrDefault() ?? "nothing"} after the snapshot, expected {path}");
                await RecordLeafAsync(vm, image, target);
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
                EnsureRunsOn(drive, await _pool.ResolveChainAsync(newLeaf), vm);
                await RecordLeafAsync(vm, image, new VolumeRef(dst.Id, newLeaf.Id));
                return new StepOutcome(Detail: $"VM {vm} drive {image} runs on domain {dst.Id} only");
            }
            case MigrationStep.ProbeSwitch:
                return await ProbeSwitchAsync(command, dst);
            default:
                throw new OperationFailedException(ErrorCodes.InvalidArgument, $"the HSM does not run {command.Operation.Step}");
        }
    }

    /// <summary>
    /// The destination leaf the plan names (pre-copy: the twin of the source leaf; post-copy: the new leaf). Journals
    /// older than the plan's <see cref="DiskPlan.SourceLeaf"/> fall back to the clone's leaf.
    /// </summary>
    private static async Task<VolumeInfo> DestinationLeafAsync(ExecuteStep command, IStorageDomain dst)
    {
        var image = command.Disk.Image;
        if (command.Strategy == MigrationStrategy.PostCopy)
            return await dst.DescribeVolumeAsync(image, command.Disk.NewLeaf);
        return command.Disk.SourceLeaf is { } named
            ? await dst.DescribeVolumeAsync(image, named)
            : (await dst.DescribeImageAsync(image)).Leaf;
    }

    /// <summary>
    /// DESIGN §7.4, read-only: after a switch whose outcome is unknown, where does the drive run? QEMU's open chain
    /// when it runs; the host's durable record when it is gone. A live snapshot's new leaf is an overlay of the
    /// source leaf, so once begun it holds every write whether or not QEMU got to switch. A begun pivot with QEMU
    /// gone is decided by comparing both leaves; if they differ nobody can tell, and the step fails for an operator.
    /// </summary>
    private async Task<StepOutcome> ProbeSwitchAsync(ExecuteStep command, IStorageDomain dst)
    {
        var vm = command.Vm;
        var image = command.Disk.Image;
        var preCopy = command.Strategy == MigrationStrategy.PreCopy;
        var switchName = preCopy ? "pivot" : "live snapshot";
        var leaf = await DestinationLeafAsync(command, dst);
        var target = new VolumeRef(dst.Id, leaf.Id);
        var targetPath = dst.Locate(image, leaf.Id);

        VmInfo? running = null;
        try
        {
            var info = await _hypervisor.DescribeVmAsync(vm);
            if (info.Running) running = info;
        }
        catch (OperationFailedException e) when (e.Code is ErrorCodes.VmNotRunning or ErrorCodes.VmNotFound)
        {
        }
        if (running is not null && running.Drive(image).Job is not null && _catalog?.Find(vm)?.PendingOf(image) is not null)
        {
            // A pivot was begun and the mirror has not ended: block-job-complete may still be converging. Let it end
            // (or not) before reading where the drive runs; answering now could roll back under a pivot that lands later.
            var deadline = DateTime.UtcNow + ProbeJobWait;
            while (await _hypervisor.GetBlockJobAsync(vm, image) is not null && DateTime.UtcNow < deadline)
                await Task.Delay(200);
            running = await _hypervisor.DescribeVmAsync(vm);
            if (running.Drive(image).Job is { } still)
                throw new OperationFailedException(ErrorCodes.Timeout,
                    $"VM {vm} drive {image}: the {switchName} was begun and mirror {still.JobId} has not ended after {ProbeJobWait.TotalSeconds:0} s; probing again");
        }
        if (running is not null)
        {
            var open = running.Drive(image).OpenChain;
            if (open.Count > 0 && open[^1] == targetPath)
            {
                await RecordLeafAsync(vm, image, target);
                return Found(SwitchFinding.OnDestination, $"VM {vm} drive {image} runs on {targetPath}: the {switchName} took effect");
            }
            ClearSwitch(vm, image);
            return Found(SwitchFinding.OnSource, $"VM {vm} drive {image} runs on {open.LastOrDefault() ?? "nothing"}: the {switchName} did not take effect");
        }

        var record = _catalog?.Find(vm)
            ?? throw new OperationFailedException(ErrorCodes.SwitchOutcomeUnknown,
                $"VM {vm} is not running and this host keeps no record of it: the outcome of the {switchName} of drive {image} is unknown");
        if (record.LeafOf(image)?.Leaf == target)
            return Found(SwitchFinding.OnDestination, $"VM {vm} is not running; its record names {target} after the {switchName}");
        if (record.PendingOf(image) is null)
            return Found(SwitchFinding.OnSource, $"VM {vm} is not running; its record shows the {switchName} of drive {image} was never begun");
        if (!preCopy)
        {
            await RecordLeafAsync(vm, image, target);
            return Found(SwitchFinding.OnDestination,
                $"VM {vm} died during the live snapshot of drive {image}: the new leaf {target} over the source chain holds every write either way");
        }
        var source = _pool.Get(command.Disk.Source);
        var sourceLeaf = command.Disk.SourceLeaf ?? leaf.Id;
        if (source.Kind == Storage.File.FileStorageDomain.FileKind && dst.Kind == Storage.File.FileStorageDomain.FileKind)
        {
            var (same, output) = await Storage.File.QemuImg.CompareAsync(source.Locate(image, sourceLeaf), null, targetPath, null, CancellationToken.None);
            if (same)
            {
                ClearSwitch(vm, image);
                return Found(SwitchFinding.OnSource,
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

    /// <summary>How long a probe lets a begun pivot's mirror end before it asks to be sent again.</summary>
    private static readonly TimeSpan ProbeJobWait = TimeSpan.FromSeconds(20);

    /// <summary>The record of a VM this host runs but does not hold yet (adopted, or started outside the management API).</summary>
    private async Task<CatalogedVm> RecordOfRunningAsync(VmId vm)
    {
        var info = await _hypervisor.DescribeVmAsync(vm);
        return new CatalogedVm(vm, info.Name, await VmReports.CurrentLeavesAsync(info, _pool));
    }

    private async Task BeginSwitchAsync(VmId vm, ImageId image, VolumeRef target)
    {
        if (_catalog is null) return;
        // A QEMU already gone is never asked to switch: its record must not show a switch begun (a probe would then
        // have to guess). Throws VM_NOT_RUNNING before the intent is written.
        if (!(await _hypervisor.DescribeVmAsync(vm)).Running)
            throw new OperationFailedException(ErrorCodes.VmNotRunning, $"VM {vm} is not running: no switch of drive {image} was begun");
        var absent = _catalog.Find(vm) is null ? await RecordOfRunningAsync(vm) : null;
        _catalog.Update(vm, () => absent!, record => record.WithPending(image, target));
    }

    private async Task RecordLeafAsync(VmId vm, ImageId image, VolumeRef leaf)
    {
        if (_catalog is null) return;
        var absent = _catalog.Find(vm) is null ? await RecordOfRunningAsync(vm) : null;
        _catalog.Update(vm, () => absent!, record => record.WithLeaf(image, leaf));
    }

    /// <summary>
    /// Runs a switch whose intent is written. When QEMU refuses it (no mirror to pivot, a parent that does not fit) and
    /// still runs with no block job on the drive, nothing can land any more: the intent is settled from what QEMU runs
    /// at once, rather than left for a probe that never comes when the command was a stale copy (simulation H1b).
    /// With QEMU gone, or a job still converging, the intent stays for the saga's probe.
    /// </summary>
    private async Task<DriveState> SettlingOnFailureAsync(VmId vm, ImageId image, Func<Task<DriveState>> switching)
    {
        try
        {
            return await switching();
        }
        catch (OperationFailedException e) when (e.Code is not (ErrorCodes.VmNotRunning or ErrorCodes.VmNotFound or ErrorCodes.Timeout))
        {
            try
            {
                var info = await _hypervisor.DescribeVmAsync(vm);
                if (info.Running && info.Drive(image).Job is null)
                {
                    var open = (await VmReports.CurrentLeavesAsync(info, _pool)).FirstOrDefault(d => d.Image == image)?.Leaf;
                    // QEMU's open chain is the truth for a running drive (DESIGN §7.1): the record names it, nothing is pending.
                    if (open is { } leaf) await RecordLeafAsync(vm, image, leaf);
                    else ClearSwitch(vm, image);
                }
            }
            catch (OperationFailedException)
            {
                // QEMU cannot be read now: the intent stays, and a probe decides.
            }
            throw;
        }
    }

    private void ClearSwitch(VmId vm, ImageId image)
    {
        if (_catalog?.Find(vm) is null) return;
        _catalog.Update(vm, () => throw new InvalidOperationException("unreachable"), record => record.WithoutPending(image));
    }

    /// <summary>
    /// Adopts the VMs a previous instance started, then reconciles each running VM's record with what QEMU has open
    /// (DESIGN §7.1): QEMU's open chain is the truth for a running drive, and every difference is said, not hidden.
    /// </summary>
    private async Task<AdoptionFinished> AdoptAsync()
    {
        var vms = await _hypervisor.AdoptRunningVmsAsync();
        var running = vms.Where(v => v.Running).ToList();
        var disagreements = new List<string>();
        foreach (var vm in running)
            disagreements.AddRange(await ReconcileRecordAsync(vm));
        return new AdoptionFinished(running.Select(v => v.Id).ToList(), disagreements, null);
    }

    /// <summary>
    /// Brings a running VM's record in line with what QEMU has open (also after a mirror ended on its own, e.g. a
    /// pivot that landed after its step had answered): returns what disagreed. A drive on its recorded leaf with a
    /// switch begun is left for the saga's probe.
    /// </summary>
    private async Task<IReadOnlyList<string>> ReconcileRecordAsync(VmInfo vm)
    {
        if (_catalog is null) return [];
        IReadOnlyList<DiskLeaf> open;
        try
        {
            open = await VmReports.CurrentLeavesAsync(vm, _pool);
        }
        catch (OperationFailedException e)
        {
            return [$"VM {vm.Id}: {e.Message}; its record is left as it is"];
        }
        var record = _catalog.Find(vm.Id);
        if (record is null)
        {
            _catalog.Save(new CatalogedVm(vm.Id, vm.Name, open));
            return [];
        }
        var disagreements = new List<string>();
        var updated = record;
        foreach (var drive in open)
        {
            var recorded = record.LeafOf(drive.Image)?.Leaf;
            var pending = record.PendingOf(drive.Image)?.Leaf;
            if (recorded == drive.Leaf && pending is null) continue;
            if (pending == drive.Leaf)
                disagreements.Add($"VM {vm.Id} drive {drive.Image}: a switch to {pending} was begun and QEMU runs on it; recorded");
            else if (recorded != drive.Leaf)
                disagreements.Add($"VM {vm.Id} drive {drive.Image}: the record names {recorded?.ToString() ?? "nothing"} but QEMU has {drive.Leaf} open; recording what QEMU runs");
            else
                continue;
            updated = updated.WithLeaf(drive.Image, drive.Leaf);
        }
        if (!ReferenceEquals(updated, record)) _catalog.Save(updated);
        return disagreements;
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
    private sealed record AdoptionFinished(IReadOnlyList<VmId> Running, IReadOnlyList<string> Disagreements, Exception? Error);
    private sealed record HypervisorEventArrived(HypervisorEvent Event);
    private sealed record MirrorSampled(OperationId Operation, BlockJobInfo? Job, Exception? Error);
    private sealed record SpeedSet(OperationId Operation, long Speed, Exception? Error);
}
