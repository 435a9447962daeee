using Akka.Actor;
using Akka.Cluster;
using Akka.Cluster.Tools.PublishSubscribe;
using Akka.Event;
using LiveMigration.HostNode.Management;
using LiveMigration.HostNode.Processes;
using LiveMigration.HostNode.Steps;
using LiveMigration.HostNode.Storage;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Spm;

/// <summary>
/// The Storage Pool Manager (DESIGN §2): the one place that changes pool metadata and copies data
/// between domains. Runs the SPM steps of the saga on the pool's domains, each as a task piped back,
/// so the actor keeps answering while a copy runs; what a step does on storage is <see cref="StorageSteps"/>'
/// (the one implementation, which DiskMover runs too), the actor adds the ledger, the replies and the lease. A repeated operation id attaches to the running
/// work or gets the remembered answer; an id it never saw (a restart, a singleton that moved) is
/// simply done again, which the idempotent storage port turns into the same effect and answer.
/// </summary>
public sealed class SpmActor : ReceiveActor, IWithTimers
{
    private sealed record ProgressDue(OperationId Operation);

    /// <summary>The name of the SPM cluster singleton (and of its proxy's target).</summary>
    public const string SingletonName = "spm";

    private readonly StoragePool _pool;
    /// <summary>The SPM lease, when the pool has one: its generation goes into every volume's owner, and each step checks it first.</summary>
    private readonly IStorageFence? _fence;
    private readonly OperationLedger _ledger = new();
    /// <summary>What each step does on storage (with the room promised to migrations); runs off the actor.</summary>
    private readonly StorageSteps _steps;
    /// <summary>
    /// Cancelled when this SPM stops (its singleton moves or its node leaves): a copy it started must not go on
    /// writing a destination volume while the SPM's new home copies the same volume again.
    /// </summary>
    private readonly CancellationTokenSource _stopped = new();
    /// <summary>
    /// A step running here: its work (which ends only once its copies' processes were reaped), what stops it alone (linked
    /// to <see cref="_stopped"/>; <see cref="StopStep"/>), its speed limit (which a <see cref="SetStepSpeed"/> changes under
    /// its copies), and whether a saga asked it to stop (its failure, whatever the copy said, is then STEP_STOPPED).
    /// </summary>
    private sealed record RunningStep(Task Work, CancellationTokenSource Stop, CopyRate Rate)
    {
        public bool Stopping { get; set; }
    }
    private readonly Dictionary<OperationId, RunningStep> _running = new();
    /// <summary>How long a stopping SPM waits for its cancelled steps to end before it answers them.</summary>
    private static readonly TimeSpan StopWait = TimeSpan.FromSeconds(30);
    /// <summary>
    /// Stops that came for an operation not running here (its SPM moved, or the step's command is still on its way):
    /// the step, when it comes, is answered STEP_STOPPED without running. Bounded, oldest forgotten first (a forgotten
    /// one only lets that copy run to its end, as before stops existed).
    /// </summary>
    private readonly Queue<OperationId> _stopsAheadOrder = new();
    private readonly HashSet<OperationId> _stopsAhead = new();
    private const int StopsAheadKept = 1024;
    private readonly ILoggingAdapter _log = Context.GetLogger();
    /// <summary>Logs a deleted image's folder whose unlink is left to the next SPM (see ImageFolderRemover).</summary>
    private readonly Action<string, Exception>? _unlinkLeft;
    // Progress goes to a step's waiters at most once a second (as the HSM's): a copy reports every chunk (qemu-img's
    // progress is polled every 100 ms), and thousands of copies each telling every chunk to a remote saga was most of
    // what an SPM and the Coordinator did while they ran. The newest progress not told yet waits for its turn: its step's
    // progress timer runs while it does.
    private readonly Dictionary<OperationId, DateTime> _progressToldAt = new();
    // the newest progress of each running step, told or not: what a saga attaching to the step hears at once
    private readonly Dictionary<OperationId, StepProgressed> _progressNewest = new();

    public ITimerScheduler Timers { get; set; } = null!;

    private static readonly int[] AnnounceAgainAfterSeconds = [1, 3, 7, 15];

    /// <summary>
    /// Copies at once by default, as VDSM's SPM runs its storage tasks on a pool of 10 threads: more only share the same
    /// disks' bandwidth (and memory for each <c>qemu-img</c>) while none finishes sooner; the admission limits (per host
    /// and per domain) usually keep fewer running, this bounds what an operator who lifted them starts.
    /// </summary>
    public const int DefaultMaxConcurrentCopies = 10;

    /// <param name="fence">
    /// The SPM lease (DESIGN §7a), or null while the pool has none (generation 0). With a lease, give the pool
    /// <see cref="FencedStorageDomain"/>s over the same fence, so every change, not only each step's start, is fenced.
    /// </param>
    /// <param name="leasePath">Instead of <paramref name="fence"/>: the lease file whose lease this node's singleton manager
    /// acquired before starting this actor (<see cref="Leased"/>).</param>
    /// <param name="maxConcurrentCopies">How many steps copy data at once; the others wait, running (0 = no bound).</param>
    public SpmActor(StoragePool pool, IStorageFence? fence = null, string? leasePath = null, int maxConcurrentCopies = DefaultMaxConcurrentCopies)
    {
        fence ??= leasePath is null ? null : LeaseOfThisNode(leasePath);
        _pool = fence is null ? pool : pool.FencedBy(fence);
        _fence = fence;
        _steps = new StorageSteps(_pool, fence, maxConcurrentCopies);
        if (leasePath is not null)
            _log.Info("SPM started under the lease {Path}, generation {Generation} ({How}): every storage change is fenced by it",
                leasePath, fence!.Generation, (fence as PoolLease)?.LastAttempt switch
                {
                    LeaseAttempt.TakenFree => "it was free",
                    LeaseAttempt.TakenExpired => "its holder had not renewed it for the period and the margin",
                    LeaseAttempt.TakenExpiredAsObserved => "its holder had not renewed it for the period and the margin, as this host had read it",
                    LeaseAttempt.TakenFromGoneHolder => "its holder's process on this machine is gone",
                    var other => $"{other}",
                });
        // Before any copy: a previous SPM's copies still running here would hold their twins' locks against our retries.
        var fileDomains = pool.Domains.Select(d => d is FencedStorageDomain f ? f.Inner : d).OfType<Storage.File.FileStorageDomain>().ToList();
        foreach (var orphan in OrphanCopies.Kill(fileDomains.Select(d => d.DomainPath).ToList()))
            _log.Warning("Killed a copy a previous SPM left running: {Process}", orphan);
        FinishInterruptedRemovals(fileDomains);
        var log = _log;
        _unlinkLeft = (folder, e) => log.Warning("Left the unlink of the deleted image folder {Folder} to the next SPM's start: {Error}", folder, e.Message);
        Storage.File.ImageFolderRemover.Failed += _unlinkLeft;
        Receive<ExecuteStep>(OnExecuteStep);
        Receive<SetStepSpeed>(OnSetStepSpeed);
        Receive<StopStep>(OnStopStep);
        Receive<StepProgressed>(OnProgress);
        Receive<ProgressDue>(due =>
        {
            if (_progressNewest.TryGetValue(due.Operation, out var progress)) TellProgress(progress);
        });
        Receive<StepFinished>(OnFinished);
        // The operator's storage changes (new domains, VM disks, snapshot volumes), each run off the actor.
        var system = Context.System;
        var storage = new SpmStorage(_pool, attach =>
        {
            // Published now and again 1, 3, 7 and 15 s later (attaching is idempotent): pubsub delivers only to the
            // subscribers this node's mediator knows, and a host that joined a moment before had not reached it yet by
            // gossip; it never attached the domain and refused a VM on it (CI: PartitionTests, STALE_RECORD).
            var mediator = DistributedPubSub.Get(system).Mediator;
            mediator.Tell(new Publish(ManagementTopics.Domains, attach));
            foreach (var seconds in AnnounceAgainAfterSeconds)
                system.Scheduler.ScheduleTellOnce(TimeSpan.FromSeconds(seconds), mediator, new Publish(ManagementTopics.Domains, attach), ActorRefs.NoSender);
        });
        Receive<GetSpmLocation>(_ => Sender.Tell(new SpmLocation(Cluster.Get(Context.System).SelfAddress.ToString())));
        Receive<IManagementMessage>(command => storage.HandleAsync(command, _stopped.Token).PipeTo(Sender));
    }

    /// <summary>
    /// A delete that a crash (of the SPM's host, or of the process that deleted) cut short after its rename, or whose
    /// unlinks after it failed (ImageFolderRemover), leaves a folder no reader lists, whose files still take the domain's
    /// space: the new SPM empties it, off the actor (a large image's unlink takes seconds). Nothing else of a crash is
    /// touched here: a half-made copy belongs to its migration's saga.
    /// </summary>
    private void FinishInterruptedRemovals(IReadOnlyList<Storage.File.FileStorageDomain> domains)
    {
        var log = _log;
        var stopped = _stopped.Token; // an SPM that stops (its lease lost, its singleton moved) changes nothing more
        var fence = _fence;
        Task.Run(async () =>
        {
            // fenced and counted as any change: the lease is not given up while these unlinks run
            IDisposable? change;
            try
            {
                change = fence is null ? null : await fence.BeginChangeAsync(stopped);
            }
            catch (Exception e)
            {
                log.Warning("Left the deletes a crash interrupted to the next SPM: {Error}", e.Message);
                return;
            }
            using var counted = change;
            foreach (var domain in domains)
            {
                if (stopped.IsCancellationRequested) return;
                try
                {
                    var finished = domain.FinishInterruptedRemovals(
                        (folder, e) => log.Warning("Could not finish the interrupted delete {Folder}: {Error}", folder, e.Message), stopped);
                    if (finished > 0) log.Warning("Finished {Count} deletes a crash interrupted on domain {Domain}", finished, domain.Id);
                }
                catch (Exception e)
                {
                    log.Warning("Could not finish the interrupted deletes on domain {Domain}: {Error}", domain.Id, e.Message);
                }
            }
        }, CancellationToken.None);
    }

    public static Props Props(StoragePool pool, IStorageFence? fence = null, int maxConcurrentCopies = DefaultMaxConcurrentCopies) =>
        Akka.Actor.Props.Create(() => new SpmActor(pool, fence, null, maxConcurrentCopies));

    /// <summary>
    /// The SPM as the lease-guarded singleton runs it: fenced by the lease (<paramref name="leasePath"/>) that its singleton
    /// manager acquired on this node before starting it (<c>use-lease</c>). Refuses to start when no such lease was made.
    /// </summary>
    public static Props Leased(StoragePool pool, string leasePath, int maxConcurrentCopies = DefaultMaxConcurrentCopies) =>
        Akka.Actor.Props.Create(() => new SpmActor(pool, null, leasePath, maxConcurrentCopies));

    private static PoolLease LeaseOfThisNode(string leasePath) =>
        FileLease.MadeIn(Context.System, leasePath) is { IsHeld: true } lease
            ? lease
            : throw new InvalidOperationException(
                $"the SPM singleton started without holding the lease {leasePath}: its singleton must use-lease {SpmLeaseSettings.ConfigPath}");

    protected override void PostStop()
    {
        Storage.File.ImageFolderRemover.Failed -= _unlinkLeft;
        // Its copies stop (their qemu-img killed and reaped); the lease is released only once they did (PoolLease.ReleaseAsync).
        _stopped.Cancel();
        // And nothing is answered before they did: a restart (supervision) starts a new instance on this node under the same
        // lease, which would take a step again, or delete its copy, while the old qemu-img still wrote. Killed, they end in
        // milliseconds; a process stuck in the kernel is waited for a while, then the answers go anyway (the lease still waits).
        var running = _running.Values.Select(r => r.Work).ToArray();
        if (running.Length > 0 && !Task.WhenAll(running).Wait(StopWait))
            _log.Warning("SPM stopped with {Count} steps whose processes had not ended after {Seconds} s", running.Count(t => !t.IsCompleted), StopWait.TotalSeconds);
        // Stopped by its singleton manager (the lease lost, the singleton handed over, the node leaving): no step in flight
        // gets an answer from here, so each is refused FENCED now and the saga retries it at the next SPM (which starts
        // only once this one's changes ended) instead of waiting out the step's deadline.
        if (_fence is null) return;
        _log.Warning("SPM stopped (its lease lost, or its singleton moving): {Count} steps in flight are refused FENCED", _ledger.Running.Count());
        foreach (var operation in _ledger.Running.ToList())
            Finish(operation, new OperationFailed(operation, ErrorCodes.Fenced,
                $"the SPM stopped during {operation.Step} (its lease lost, or its singleton moving): it changes nothing more; the SPM that holds the lease next runs it",
                Transient: true));
    }

    /// <summary>The steps this actor runs; the others belong to the HSM of the VM's host.</summary>
    public static bool Runs(MigrationStep step) => StorageSteps.Runs(step);

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
                // where the copy stands now, not at its next report: a saga recovered after a Coordinator's crash shows its
                // migration moving at once (a slow copy may report only every few seconds)
                if (_progressNewest.TryGetValue(operation, out var newest))
                    sender.Tell(new OperationProgress(operation, newest.Done, newest.Total));
                return;
        }

        if (!Runs(operation.Step) || operation.Image != command.Disk.Image)
        {
            Finish(operation, new OperationFailed(operation, ErrorCodes.InvalidArgument,
                $"the SPM does not run {operation.Step} for image {command.Disk.Image} (operation {operation})", Transient: false));
            return;
        }
        if (_stopsAhead.Contains(operation))
        {
            Finish(operation, Stopped(operation, "its stop came before it: it did not run"));
            return;
        }
        _log.Info("Starting {Operation} for image {Image} from domain {Source} to {Destination}",
            operation, command.Disk.Image, command.Disk.Source, command.Disk.Destination);
        var self = Self;
        // The copy's progress callback runs on the copy's thread: only a message crosses into the actor.
        var progress = new InlineProgress<CopyProgress>(p => self.Tell(new StepProgressed(operation, p.Done, p.Total)));
        var stop = CancellationTokenSource.CreateLinkedTokenSource(_stopped.Token);
        var token = stop.Token;
        var rate = new CopyRate(command.SpeedBytesPerSecond);
        var work = StepReplies.RunAsync(operation, () => _steps.RunAsync(command, progress, token, rate));
        _running[operation] = new RunningStep(work, stop, rate);
        work.PipeTo(self);
    }

    /// <summary>
    /// A saga undoing its migration stops the copy it no longer needs. Cancelling the step's token kills its
    /// <c>qemu-img</c>, and the step's task ends only once that process was reaped: the STEP_STOPPED answer, sent when
    /// it ends, comes after the last write, so the rollback's delete of the copy never races it. Only a copy before the
    /// point of no return is stopped (<see cref="StopStep.Stops"/>); after it, the copy is the VM's way forward.
    /// </summary>
    private void OnStopStep(StopStep command)
    {
        var operation = command.Operation;
        if (!StopStep.Stops(operation.Step))
        {
            _log.Warning("Refused to stop {Operation}: only a copy before the point of no return is stopped ({Reason})", operation, command.Reason);
            return;
        }
        if (_running.TryGetValue(operation, out var step))
        {
            if (step.Stopping) return;
            step.Stopping = true;
            _log.Info("Stopping {Operation}: {Reason}", operation, command.Reason);
            step.Stop.Cancel();
            return;
        }
        if (!_stopsAhead.Add(operation)) return;
        _log.Info("Stop of {Operation}, which does not run here, kept for its command: {Reason}", operation, command.Reason);
        _stopsAheadOrder.Enqueue(operation);
        while (_stopsAheadOrder.Count > StopsAheadKept) _stopsAhead.Remove(_stopsAheadOrder.Dequeue());
    }

    private static OperationFailed Stopped(OperationId operation, string how) =>
        new(operation, ErrorCodes.StepStopped, $"{operation.Step} stopped at its migration's request ({how}); the copy it left is removed by the rollback",
            Transient: false);

    /// <summary>An operator's new speed for a copy step that runs here: its copies follow it at once. No reply (as the HSM).</summary>
    private void OnSetStepSpeed(SetStepSpeed command)
    {
        if (!_running.TryGetValue(command.Operation, out var step))
        {
            _log.Debug("Speed {Speed} B/s for {Operation}: no copy of that step runs here", command.SpeedBytesPerSecond, command.Operation);
            return;
        }
        if (step.Rate.Set(command.SpeedBytesPerSecond))
            _log.Info("Speed of {Operation} set to {Speed} B/s: its copy follows it now", command.Operation, command.SpeedBytesPerSecond);
    }

    private void OnProgress(StepProgressed p)
    {
        // a report the copy made just before its step finished has nobody to go to
        if (_ledger.WaitersOf(p.Operation).Count == 0) return;
        _progressNewest[p.Operation] = p;
        var now = DateTime.UtcNow;
        if (_progressToldAt.TryGetValue(p.Operation, out var told) && now - told < Hsm.HsmActor.ProgressInterval)
        {
            if (!Timers.IsTimerActive(ProgressTimer(p.Operation)))
                Timers.StartSingleTimer(ProgressTimer(p.Operation), new ProgressDue(p.Operation), told + Hsm.HsmActor.ProgressInterval - now);
            return;
        }
        TellProgress(p);
    }

    private void TellProgress(StepProgressed p)
    {
        // this is the newest: nothing waits any more
        Timers.Cancel(ProgressTimer(p.Operation));
        _progressToldAt[p.Operation] = DateTime.UtcNow;
        foreach (var waiter in _ledger.WaitersOf(p.Operation))
            waiter.Tell(new OperationProgress(p.Operation, p.Done, p.Total));
    }

    private static string ProgressTimer(OperationId operation) => $"progress-{operation}";

    private void OnFinished(StepFinished finished)
    {
        // A stopped step fails however its killed copy put it (cancelled, qemu-img's error): the saga hears why.
        if (_running.TryGetValue(finished.Operation, out var step) && step.Stopping && finished.Reply is OperationFailed && !_stopped.IsCancellationRequested)
            finished = finished with { Reply = Stopped(finished.Operation, "its copy was killed and has ended") };
        StepReplies.Announce(finished, _log, Context.System.EventStream);
        Finish(finished.Operation, finished.Reply);
    }

    private void Finish(OperationId operation, IHostReply reply)
    {
        if (_running.Remove(operation, out var step)) step.Stop.Dispose();
        // the newest progress still waiting goes first: the waiters' last figure is the copy's last, not an older one
        if (Timers.IsTimerActive(ProgressTimer(operation)) && _progressNewest.TryGetValue(operation, out var untold)) TellProgress(untold);
        _progressToldAt.Remove(operation);
        _progressNewest.Remove(operation);
        Timers.Cancel(ProgressTimer(operation));
        foreach (var waiter in _ledger.Finish(operation, reply)) waiter.Tell(reply);
    }
}
