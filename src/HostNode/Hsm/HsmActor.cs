using Akka.Actor;
using Akka.Event;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Management;
using LiveMigration.HostNode.Spm;
using LiveMigration.HostNode.Steps;
using LiveMigration.HostNode.Storage;
using LiveMigration.Shared.Hosting;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Hsm;

/// <summary>
/// The Host Storage Manager of one host (DESIGN §2): runs the HSM steps of the saga on this host's
/// hypervisor — mirror, wait for READY, pivot, cancel, live snapshot, backing switch. Each call runs
/// as a task piped back to the actor; what a step does on the hypervisor and the VM record is <see cref="DriveSteps"/>'
/// (the one implementation, which DiskMover runs too), the actor adds the ledger, the replies and the non-blocking wait. Readiness comes from the hypervisor's pushed events (never a
/// polling timer): the event handler only tells the actor, the actor then reads the job once. Progress is
/// different: operators watch the bars move, so while a mirror is waited for and not READY the actor reads
/// the job about once a second and pushes <see cref="OperationProgress"/> to the waiters. The same reads tell whether a
/// background mirror converges (<see cref="MirrorConvergence"/>); one that does not is started again write-blocking,
/// and the step's outcome says so with the rates that decided it; one whose remaining work does not shrink for minutes
/// fails the step MIRROR_NOT_CONVERGING with its numbers instead of waiting for ever. On start
/// it adopts the VMs and block jobs a previous HostNode left running, and serves steps only after that.
/// A repeated operation id attaches or gets the same answer; an unknown one is redone, which the
/// idempotent hypervisor port answers from QEMU's state.
/// </summary>
public sealed class HsmActor : ReceiveActor, IWithUnboundedStash, IWithTimers
{
    /// <summary>How often a running mirror's progress is read and pushed to the saga.</summary>
    public static readonly TimeSpan ProgressInterval = TimeSpan.FromSeconds(1);
    /// <summary>How often a QEMU found running but not adopted (its monitor held by another client) is tried again.</summary>
    public static readonly TimeSpan DefaultReadoptInterval = TimeSpan.FromSeconds(10);

    private readonly IHypervisor _hypervisor;
    /// <summary>What each step does on the hypervisor, with the host's durable VM records (DESIGN §7.1); runs off the actor.</summary>
    private readonly DriveSteps _steps;
    private readonly OperationLedger _ledger = new();
    /// <summary>How long a background mirror is watched before it is judged not to converge.</summary>
    private readonly TimeSpan _convergenceWindow;
    private readonly TimeSpan _stallWindow;
    /// <summary>The WaitMirrorReady operations waiting for their drive's mirror to turn READY.</summary>
    private readonly Dictionary<OperationId, MirrorWait> _mirrorWaits = new();
    /// <summary>Mirror waits with a read of the job under way: a slow QMP answer does not pile up more reads.</summary>
    private readonly HashSet<OperationId> _sampling = [];
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private Action<HypervisorEvent>? _forwardEvent;
    /// <summary>Completed when the adoption of the running VMs has ended (the host's reporter waits for it).</summary>
    private readonly TaskCompletionSource? _adopted;
    private readonly TimeSpan _readoptInterval;
    /// <summary>VMs whose QEMU runs but could not be adopted: a step for one tries the adoption again first.</summary>
    private HashSet<VmId> _unadopted = [];
    private bool _readopting;
    /// <summary>Steps for unadopted VMs, run once the adoption tried for them ended (adopted or not).</summary>
    private readonly List<(ExecuteStep Command, IActorRef Sender)> _awaitingAdoption = [];

    /// <param name="adopted">Completed once the running VMs are adopted (or their adoption failed): until then a VM of the
    /// catalog this host does not list yet may still run, and the host's reporter must not call it stopped.</param>
    /// <param name="stallWindow">How long a mirror's remaining work may not shrink before its wait gives up (<see cref="MirrorConvergence.DefaultStallWindow"/>).</param>
    public HsmActor(IHypervisor hypervisor, StoragePool pool, VmCatalog? catalog = null, TimeSpan? convergenceWindow = null,
        TaskCompletionSource? adopted = null, TimeSpan? readoptInterval = null, TimeSpan? stallWindow = null)
    {
        _hypervisor = hypervisor;
        _adopted = adopted;
        _readoptInterval = readoptInterval ?? DefaultReadoptInterval;
        _convergenceWindow = convergenceWindow ?? MirrorConvergence.DefaultWindow;
        _stallWindow = stallWindow ?? MirrorConvergence.DefaultStallWindow;
        // Without a catalog (a host without management, in-process tests) there are no VM records to keep.
        _steps = new DriveSteps(hypervisor, pool, new DriveRecords(hypervisor, pool, catalog));
        Adopting();
    }

    public IStash Stash { get; set; } = null!;
    public ITimerScheduler Timers { get; set; } = null!;

    public static Props Props(IHypervisor hypervisor, StoragePool pool, VmCatalog? catalog = null, TimeSpan? convergenceWindow = null,
        TaskCompletionSource? adopted = null, TimeSpan? readoptInterval = null, TimeSpan? stallWindow = null) =>
        Akka.Actor.Props.Create(() => new HsmActor(hypervisor, pool, catalog, convergenceWindow, adopted, readoptInterval, stallWindow));

    /// <summary>The steps this actor runs; the others belong to the SPM.</summary>
    public static bool Runs(MigrationStep step) => DriveSteps.Runs(step);

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
        _adopted?.TrySetResult(); // stopped before its adoption ended: the reporter must not wait for good
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
            // A reporter without the gate may have reported before the adoption knew its VMs: report again now.
            Context.System.EventStream.Publish(new Inventory.HostInventoryChanged($"adopted {done.Running.Count} running VMs"));
            Become(Serving);
            ListedWith(done);
            _adopted?.TrySetResult();
            Stash.UnstashAll();
        });
        ReceiveAny(_ => Stash.Stash());
    }

    private void Serving()
    {
        Receive<ExecuteStep>(command =>
        {
            if (!_unadopted.Contains(command.Vm))
            {
                OnExecuteStep(command, Sender);
                return;
            }
            // Its QEMU runs but was not adopted: adopt it (and reconcile its record) first, then run the step either way.
            _awaitingAdoption.Add((command, Sender));
            Readopt();
        });
        Receive<UnadoptedListed>(OnUnadoptedListed);
        Receive<ReadoptDue>(_ =>
        {
            if (_unadopted.Count > 0) Readopt();
            else ListUnadopted(); // the last listing failed
        });
        Receive<AdoptionFinished>(OnReadopted);
        Receive<SetStepSpeed>(OnSetStepSpeed);
        Receive<HypervisorEventArrived>(e => OnHypervisorEvent(e.Event));
        Receive<MirrorSampled>(OnMirrorSampled);
        Receive<ProgressDue>(due =>
        {
            if (_mirrorWaits.TryGetValue(due.Operation, out var wait) && !wait.Restarting && !_sampling.Contains(due.Operation))
                SampleMirror(due.Operation);
        });
        Receive<MirrorRestarted>(OnMirrorRestarted);
        Receive<StepFinished>(OnFinished);
        Receive<SpeedSet>(s =>
        {
            if (s.Error is null) _log.Info("Speed of {Operation} set to {Speed} B/s", s.Operation, s.Speed);
            else _log.Warning("Setting the speed of {Operation} to {Speed} B/s failed: {Error}", s.Operation, s.Speed, s.Error.Message);
        });
    }

    private void OnExecuteStep(ExecuteStep command, IActorRef sender)
    {
        var operation = command.Operation;
        switch (_ledger.Admit(operation, sender, out var answer))
        {
            case OperationLedger.Admission.AlreadyAnswered:
                _log.Info("Answering repeated {Operation} with its remembered result", operation);
                sender.Tell(answer);
                return;
            case OperationLedger.Admission.Attached:
                _log.Info("Attaching {Sender} to running {Operation}", sender, operation);
                // A repeated wait doubles as a progress request: read the job once more.
                if (_mirrorWaits.TryGetValue(operation, out var waiting) && !waiting.Restarting) SampleMirror(operation);
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
            _mirrorWaits[operation] = new MirrorWait(command, _convergenceWindow, _stallWindow);
            SampleMirror(operation);
            Timers.StartPeriodicTimer(ProgressTimer(operation), new ProgressDue(operation), ProgressInterval);
            return;
        }
        var steps = _steps;
        StepReplies.RunAsync(operation, () => steps.RunAsync(command), KillQemuOf(command.Vm)).PipeTo(Self);
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
        var wait = _mirrorWaits[operation];
        var (vm, drive) = (wait.Vm, wait.Drive);
        _sampling.Add(operation);
        _hypervisor.GetBlockJobAsync(vm, drive).PipeTo(Self,
            success: job => new MirrorSampled(operation, job, null),
            failure: e => new MirrorSampled(operation, null, e));
    }

    private void OnMirrorSampled(MirrorSampled sample)
    {
        var operation = sample.Operation;
        _sampling.Remove(operation);
        // A read taken around a restart may show the old job ending or no job at all: the restart's end reads again.
        if (!_mirrorWaits.TryGetValue(operation, out var wait) || wait.Restarting) return;
        if (sample.Error is not null)
        {
            Finish(operation, StepReplies.Failed(operation, sample.Error));
            return;
        }
        StepOutcome? ready;
        try
        {
            ready = MirrorReadiness.Judge(wait.Vm, wait.Drive, sample.Job);
        }
        catch (OperationFailedException e)
        {
            Finish(operation, StepReplies.Failed(operation, e));
            return;
        }
        Progress(operation, sample.Job!);
        if (ready is not null)
        {
            Finish(operation, new OperationSucceeded(operation, ready with { Note = wait.Note }));
            return;
        }
        if (!wait.SpeedChecked)
        {
            // The saga gives the mirror the disk's whole share from here on (it shared it with the SPM's copy until now).
            wait.SpeedChecked = true;
            var speed = wait.Command.SpeedBytesPerSecond;
            if (sample.Job!.SpeedBytesPerSecond != speed)
                _hypervisor.SetJobSpeedAsync(wait.Vm, wait.Drive, speed).PipeTo(Self,
                    success: () => new SpeedSet(operation, speed, null),
                    failure: e => new SpeedSet(operation, speed, e));
        }
        if (wait.Restarting || wait.Watch.Observe(MirrorConvergence.Now, sample.Job!, sample.Job!.Mode ?? wait.Mode) is not { } verdict) return;
        var why = verdict.Why;
        if (verdict.GivesUp)
        {
            // Not transient: waiting again would watch the same job. The saga rolls back (the VM stays on its source).
            _log.Warning("{Operation} on VM {Vm} drive {Image}: {Why}", operation, wait.Vm, wait.Drive, why);
            var earlier = wait.Note is { } note ? $" (earlier: {note})" : "";
            Finish(operation, new OperationFailed(operation, ErrorCodes.MirrorNotConverging, why + earlier, Transient: false));
            return;
        }
        _log.Warning("{Operation} on VM {Vm} drive {Image}: {Why}; starting it again write-blocking", operation, wait.Vm, wait.Drive, why);
        wait.Restarting = true;
        var startedAt = DateTimeOffset.UtcNow;
        _steps.RestartMirrorWriteBlockingAsync(wait.Command).PipeTo(Self,
            success: job => new MirrorRestarted(operation, job, why, startedAt, null),
            failure: e => new MirrorRestarted(operation, null, why, startedAt, e));
    }

    /// <summary>A mirror started again write-blocking (or not): the wait goes on with the new job, and its outcome will say why.</summary>
    private void OnMirrorRestarted(MirrorRestarted restarted)
    {
        var operation = restarted.Operation;
        if (!_mirrorWaits.TryGetValue(operation, out var wait)) return;
        wait.Restarting = false;
        if (restarted.Error is not null)
        {
            _log.Warning("{Operation}: starting the mirror again write-blocking failed: {Error}", operation, restarted.Error.Message);
            // The failure names why the mirror was being replaced, with its rates, not only what the restart met.
            var failed = StepReplies.Failed(operation, restarted.Error);
            Finish(operation, failed with { Message = $"{restarted.Why}; starting it again write-blocking failed: {failed.Message}" });
            return;
        }
        wait.Mode = CopyMode.WriteBlocking;
        wait.Watch.Reset();
        wait.Note = $"{restarted.Why}; started again write-blocking at {restarted.At:HH:mm:ss} UTC (guest writes then reach both sides)";
        _log.Info("{Operation}: mirror {Job} runs write-blocking now", operation, restarted.Job!.JobId);
        // A speed an operator set while the job was being replaced found no job: it applies to the new one.
        if (wait.SpeedWhileRestarting is { } speed)
        {
            wait.SpeedWhileRestarting = null;
            Self.Tell(new SetStepSpeed(operation, speed));
        }
        SampleMirror(operation);
    }

    private void OnHypervisorEvent(HypervisorEvent e)
    {
        if (e is BlockJobCompleted && _steps.Records.Catalog is not null)
        {
            // A mirror that completed moved the drive: the record follows, even when no step is waiting for it.
            var log = _log;
            var records = _steps.Records;
            _hypervisor.DescribeVmAsync(e.Vm).ContinueWith(async t =>
            {
                if (t.IsCompletedSuccessfully && t.Result.Running)
                    foreach (var disagreement in await records.ReconcileAsync(t.Result))
                    {
                        // a pivot's mirror ends before the pivot has recorded it: the usual case, not a warning
                        if (disagreement.SwitchLanded) log.Info("After a block job ended: {Disagreement}", disagreement.Text);
                        else log.Warning("After a block job ended: {Disagreement}", disagreement.Text);
                    }
            }).Unwrap();
        }
        foreach (var (operation, wait) in _mirrorWaits.Where(w => w.Value.Vm == e.Vm).ToList())
        {
            var meaning = MirrorReadiness.Read(e, wait.Vm, wait.Drive, replaced: wait.Restarting || wait.Mode != wait.Command.CopyMode);
            if (meaning.Error is not null) Finish(operation, StepReplies.Failed(operation, meaning.Error));
            else if (meaning.ReadJob && !wait.Restarting) SampleMirror(operation);
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
        foreach (var wait in _mirrorWaits.Values.Where(w => w.Drive == image))
        {
            if (wait.Restarting) wait.SpeedWhileRestarting = command.SpeedBytesPerSecond;
            // the newest speed wins: the wait's first read must not put back the one its step carried
            wait.SpeedChecked = true;
        }
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

    /// <summary>
    /// Adopts the VMs a previous instance started, then reconciles each running VM's record with what QEMU has open
    /// (DESIGN §7.1): QEMU's open chain is the truth for a running drive, and every difference is said, not hidden.
    /// </summary>
    /// <param name="only">When adopting again: the VMs not adopted before (the others are served already: not reconciled).</param>
    private async Task<AdoptionFinished> AdoptAsync(IReadOnlySet<VmId>? only = null)
    {
        var vms = await _hypervisor.AdoptRunningVmsAsync();
        var running = vms.Where(v => v.Running && (only is null || only.Contains(v.Id))).ToList();
        var disagreements = new List<string>();
        foreach (var vm in running)
            disagreements.AddRange((await _steps.Records.ReconcileAsync(vm)).Select(d => d.Text));
        // Known before the first step is served, so a step for one waits for its adoption instead of failing VM_NOT_FOUND.
        IReadOnlyList<VmId>? unadopted;
        try { unadopted = await _hypervisor.ListUnadoptedAsync(); }
        catch (Exception) { unadopted = null; }
        return new AdoptionFinished(running.Select(v => v.Id).ToList(), disagreements, null, unadopted);
    }

    /// <summary>The VMs an adoption left unadopted, as it listed them after adopting (or listed again if that failed).</summary>
    private void ListedWith(AdoptionFinished done)
    {
        if (done.Unadopted is { } unadopted) OnUnadoptedListed(new UnadoptedListed(unadopted));
        else ListUnadopted();
    }

    private void ListUnadopted() =>
        _hypervisor.ListUnadoptedAsync().PipeTo(Self, success: vms => new UnadoptedListed(vms), failure: e => new UnadoptedListed(null, e));

    private void OnUnadoptedListed(UnadoptedListed listed)
    {
        if (_readopting) return; // the attempt under way lists them again when it ends
        if (listed.Vms is null)
        {
            // Not known: the VMs known unadopted stay so, and the listing is tried again.
            _log.Warning("Listing the VMs that run unadopted failed ({Error}); trying again in {Interval}", listed.Error?.Message, _readoptInterval);
            Timers.StartSingleTimer(nameof(ReadoptDue), ReadoptDue.Instance, _readoptInterval);
            return;
        }
        var vms = listed.Vms.ToHashSet();
        if (vms.Count > 0 && !vms.SetEquals(_unadopted))
            _log.Warning("VMs {Vms} run but could not be adopted (their monitor does not answer: another client holds it?); " +
                         "a step for one fails until it is; trying again every {Interval}", string.Join(", ", vms), _readoptInterval);
        _unadopted = vms;
        if (vms.Count > 0) Timers.StartSingleTimer(nameof(ReadoptDue), ReadoptDue.Instance, _readoptInterval);
    }

    private void Readopt()
    {
        if (_readopting || _unadopted.Count == 0) return;
        _readopting = true;
        Timers.Cancel(nameof(ReadoptDue));
        AdoptAsync(_unadopted.ToHashSet()).PipeTo(Self, success: done => done, failure: e => new AdoptionFinished([], [], e));
    }

    private void OnReadopted(AdoptionFinished done)
    {
        foreach (var disagreement in done.Disagreements)
            _log.Warning("Reconciling the VM records with QEMU: {Disagreement}", disagreement);
        if (done.Error is not null)
            _log.Warning("Adopting again the VMs {Vms} failed: {Error}", string.Join(", ", _unadopted), done.Error.Message);
        else if (done.Running.Count > 0)
        {
            _log.Info("Adopted {Count} running VMs whose monitor answers again: {Vms}", done.Running.Count, string.Join(", ", done.Running));
            Context.System.EventStream.Publish(new Inventory.HostInventoryChanged($"adopted {done.Running.Count} running VMs"));
        }
        _readopting = false;
        _unadopted.ExceptWith(done.Running);
        var waiting = _awaitingAdoption.ToList();
        _awaitingAdoption.Clear();
        foreach (var (command, sender) in waiting)
        {
            if (_unadopted.Contains(command.Vm))
                // Not "no such VM": it runs, and the saga tries again later (transient) instead of concluding from it.
                sender.Tell(new OperationFailed(command.Operation, ErrorCodes.Timeout,
                    $"VM {command.Vm} runs but its QEMU monitor does not answer (another client holds it?): not adopted yet, try again", Transient: true));
            else
                OnExecuteStep(command, sender);
        }
        ListedWith(done);
    }

    private static string ProgressTimer(OperationId operation) => $"progress-{operation}";

    /// <summary>The VMs that run unadopted, or null when listing them failed (<paramref name="Error"/>).</summary>
    private sealed record UnadoptedListed(IReadOnlyList<VmId>? Vms, Exception? Error = null);
    private sealed class ReadoptDue
    {
        public static readonly ReadoptDue Instance = new();
    }

    private sealed record ProgressDue(OperationId Operation);
    private sealed record AdoptionFinished(IReadOnlyList<VmId> Running, IReadOnlyList<string> Disagreements, Exception? Error,
        IReadOnlyList<VmId>? Unadopted = null);
    private sealed record HypervisorEventArrived(HypervisorEvent Event);
    private sealed record MirrorSampled(OperationId Operation, BlockJobInfo? Job, Exception? Error);
    private sealed record SpeedSet(OperationId Operation, long Speed, Exception? Error);
    private sealed record MirrorRestarted(OperationId Operation, BlockJobInfo? Job, string Why, DateTimeOffset At, Exception? Error);

    /// <summary>One WaitMirrorReady: the step as sent, the mode the mirror runs in now, and the watch on its convergence.</summary>
    private sealed class MirrorWait(ExecuteStep command, TimeSpan window, TimeSpan stallWindow)
    {
        public ExecuteStep Command => command;
        public VmId Vm => command.Vm;
        public ImageId Drive => command.Disk.Image;
        /// <summary>The mode the mirror runs in, as far as this wait knows (the adapter's own word wins when it has one).</summary>
        public CopyMode Mode { get; set; } = command.CopyMode;
        public MirrorConvergence Watch { get; } = new(window, stallWindow);
        /// <summary>The job is being replaced by a write-blocking one: its cancel event and its absence are expected.</summary>
        public bool Restarting { get; set; }
        public long? SpeedWhileRestarting { get; set; }
        /// <summary>What the step's outcome will tell operators about this wait (why the mirror was started again).</summary>
        public string? Note { get; set; }
        /// <summary>The job's speed was compared with the wait's (the saga's limit for the mirror from now on).</summary>
        public bool SpeedChecked { get; set; }
    }
}
