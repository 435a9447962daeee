using Akka.Actor;
using Akka.Cluster.Sharding;
using Akka.Cluster.Tools.PublishSubscribe;
using Akka.Event;
using Akka.Persistence;
using LiveMigration.Shared.Hosting;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Migration;

/// <summary>
/// The thin persistent actor around the pure saga (one per migration, a sharded entity): it decides with
/// <see cref="MigrationDecider"/>, persists the events, applies them, answers the requester, and sends what
/// <see cref="MigrationActions.Next"/> asks for. Crash safety: after recovery it sends every step in flight
/// again with its old operation id, and a step without an answer is sent again after a deadline; hosts
/// treat a repeated operation id as the same operation.
/// </summary>
public sealed class MigrationActor : ReceivePersistentActor, IWithTimers
{
    /// <summary>Timer message: a step's deadline passed.</summary>
    private sealed record StepDeadlineDue(OperationId Operation);

    /// <summary>Timer message: a queued migration asks the limits again (they may have restarted and forgotten it).</summary>
    private sealed record AdmissionRetryDue;

    /// <summary>Timer message: progress that came in since the last publication is due to be published.</summary>
    private sealed record ProgressPublishDue;

    /// <summary>The inventory's answer to where the VM runs (null: it does not know), for the per-host limit; <paramref name="Failed"/>: no answer came.</summary>
    private sealed record HostLocated(string? Host, bool Failed = false);

    /// <summary>Timer message: the inventory did not answer where the VM runs; ask it again.</summary>
    private sealed record LocateAgain;

    private const string RetryTimer = "retry-due";
    private const string AdmissionTimer = "admission";
    private const string ProgressTimer = "progress-publish";
    private const string LocateTimer = "locate-again";

    /// <summary>
    /// At most one publication of progress a second per migration: a copy reports every 100 ms and a mirror every second,
    /// and each publication reaches every node and every open event stream; nobody reads a bar faster than that.
    /// </summary>
    private static readonly TimeSpan ProgressPublishInterval = TimeSpan.FromSeconds(1);

    private readonly IMigrationHosts _hosts;
    private readonly IActorRef _admission;
    private readonly MigrationActorSettings _settings;
    private readonly ILoggingAdapter _log = Context.GetLogger();
    /// <summary>Steps sent by this incarnation; empty after a recovery, so every step in flight goes out again.</summary>
    private readonly HashSet<OperationId> _sent = [];
    /// <summary>Steps in flight this incarnation asked to stop (<see cref="SendStop"/>); a step sent again is stopped again.</summary>
    private readonly HashSet<OperationId> _stopsSent = [];
    private MigrationState _state;
    private bool _admissionAsked;
    /// <summary>Recovered from the journal while Queued: its first ask waits (<see cref="MigrationActorSettings.RecoveredQueuedAskDelay"/>).</summary>
    private bool _recoveredQueued;
    private bool _released;
    private bool _vmWatched;
    /// <summary>The VM's host as the inventory answered, when this node's directory had none (<see cref="NeedsLocating"/>).</summary>
    private string? _locatedHost;
    private bool _locating;
    private bool _locateAnswered;
    /// <summary>Fault plan (tests only): the first command of each step a replay-late rule names, to send again late.</summary>
    private readonly Dictionary<(MigrationStep Step, ImageId Image), SendStep> _keptForReplay = new();
    private long _lastSnapshotAt;
    private DateTimeOffset _lastPublished = DateTimeOffset.MinValue;

    public ITimerScheduler Timers { get; set; } = null!;
    public override string PersistenceId { get; }

    protected override void PreStart()
    {
        base.PreStart();
        // In the cluster, a host that rejoins gets its steps in flight again at once (see the HostRejoined handler).
        _hosts.RejoinWatcher?.Tell(new WatchHostRejoins(Self));
    }

    protected override void PostStop()
    {
        _hosts.RejoinWatcher?.Tell(new UnwatchHostRejoins(Self));
        MigrationMetrics.Forget(Id);
        base.PostStop();
    }
    public MigrationId Id { get; }

    public static string PersistenceIdOf(MigrationId id) => $"migration-{id}";

    public static Props Props(MigrationId id, IMigrationHosts hosts, IActorRef admission, MigrationActorSettings? settings = null)
    {
        // Only plain captured values in the expression: Akka reads those by reflection, but compiles (and JITs) any other
        // argument expression, such as a `??`, on every call: once per migration, a dynamic method to JIT and later finalize.
        var resolved = settings ?? MigrationActorSettings.Default;
        return Akka.Actor.Props.Create(() => new MigrationActor(id, hosts, admission, resolved));
    }

    public MigrationActor(MigrationId id, IMigrationHosts hosts, IActorRef admission, MigrationActorSettings settings)
    {
        Id = id;
        PersistenceId = PersistenceIdOf(id);
        _hosts = hosts;
        _admission = admission;
        _settings = settings;
        _state = MigrationState.Initial(id);

        Recover<SnapshotOffer>(offer =>
        {
            if (offer.Snapshot is MigrationState snapshot)
            {
                _state = snapshot;
                _lastSnapshotAt = offer.Metadata.SequenceNr;
            }
        });
        Recover<IMigrationEvent>(e => _state = MigrationState.Apply(_state, e));
        Recover<RecoveryCompleted>(_ => AfterRecovery());

        Command<IMigrationCommand>(c => Handle(c, Sender, replyTo: IsOperatorCommand(c) ? Sender : null));
        Command<OperationSucceeded>(r => Handle(new ReportStepSucceeded(r.Operation.Migration, r.Operation, r.Outcome), Sender, null));
        Command<OperationFailed>(r => Handle(new ReportStepFailed(r.Operation.Migration, r.Operation, r.Code, r.Message, r.Transient), Sender, null));
        Command<OperationProgress>(p =>
        {
            // progress says the host works on it: no need to send it again yet
            if (_sent.Contains(p.Operation))
                StartDeadline(p.Operation);
            Handle(new ReportProgress(p.Operation.Migration, p.Operation, p.Done, p.Total), Sender, null);
        });
        Command<ProgressPublishDue>(_ =>
        {
            if (!_state.Status.IsFinished) Publish();
        });
        Command<StepDeadlineDue>(d => SendAgainIfUnanswered(d.Operation));
        Command<HostRejoined>(joined =>
        {
            // A step sent to the host's previous incarnation is lost: send it again now rather than at the deadline.
            // Only that host's steps (and the SPM's when the host may hold the SPM now); hosts answer a repeated
            // operation id as the same step.
            foreach (var step in MigrationActions.Next(_state).OfType<SendStep>()
                         .Where(s => _sent.Contains(s.Operation) && joined.Concerns(s.Role, _hosts.HostOf(s.Vm))))
            {
                _log.Info("Migration {Migration}: host {Host} at {Address} joined; sending {Operation} again", Id, joined.HostId ?? "(unknown)", joined.Address, step.Operation);
                Send(step);
            }
        });
        Command<AdmissionRetryDue>(_ => AskAdmission());
        Command<HostLocated>(OnHostLocated);
        Command<LocateAgain>(_ => NeedsLocating());
        Command<AdmissionCheck>(_ => AnswerAdmissionCheck(Sender));
        Command<AnnounceAdmission>(announced =>
        {
            // the limits started anew with nothing counted (their singleton moved): the slots this one holds, or its request, again
            var limits = announced.Limits.IsNobody() ? _admission : announced.Limits;
            if (_state.Status is MigrationStatus.Queued)
            {
                if (_admissionAsked) AskAdmission(limits);
            }
            else if (_state.Status is not MigrationStatus.New && !_state.Status.IsFinished) AnswerAdmissionCheck(limits);
        });
        Command<GetMigrationState>(_ =>
        {
            Sender.Tell(new MigrationStateReply(MigrationViews.ViewOf(_state, DateTimeOffset.UtcNow), LastSequenceNr));
            // A question about an unknown id must not leave a remembered, empty entity behind.
            PassivateIfIdle();
        });
        Command<SaveSnapshotSuccess>(s => _log.Debug("Migration {Migration}: snapshot at event {SequenceNr}", Id, s.Metadata.SequenceNr));
        Command<SaveSnapshotFailure>(f => _log.Warning(f.Cause, "Migration {Migration}: snapshot at event {SequenceNr} failed; recovery replays more events", Id, f.Metadata.SequenceNr));
    }

    /// <summary>Only operator commands get an answer; host results, timers and the limits' admission do not wait for one.</summary>
    private static bool IsOperatorCommand(IMigrationCommand command) =>
        command is StartMigration or CancelMigration or ResumeMigration or AbandonMigration or SetMigrationSpeed;

    private void Handle(IMigrationCommand command, IActorRef sender, IActorRef? replyTo)
    {
        var outcomeOf = command switch
        {
            ReportStepSucceeded ok when _state.DiskAwaiting(ok.Operation) is not null => ok.Operation.Step,
            ReportStepFailed failed when _state.DiskAwaiting(failed.Operation) is not null => failed.Operation.Step,
            _ => (MigrationStep?)null,
        };
        if (outcomeOf is { } received) FaultPlan.Current.Hit(received, FaultMoment.OutcomeReceived);
        var decision = MigrationDecider.Decide(_state, command, DateTimeOffset.UtcNow);
        if (decision.Refused)
        {
            _log.Info("Migration {Migration} refused {Command} from {Sender}: {Code}: {Message}", Id, command.GetType().Name, sender, decision.RefusalCode, decision.RefusalMessage);
            replyTo?.Tell(new MigrationCommandRefused(Id, decision.RefusalCode!, decision.RefusalMessage!));
            PassivateIfIdle();
            return;
        }
        if (decision.Events.Count == 0)
        {
            replyTo?.Tell(Accepted(command));
            // A timer that fired a moment early (nothing due yet) is armed again, so a retry never hangs.
            if (command is RetryDue) Dispatch();
            // The same speed again still reaches the hosts: a host that restarted may have lost it.
            if (command is SetMigrationSpeed) SendSpeeds();
            return;
        }

        if (decision.Events.All(e => e is ProgressReported))
        {
            // Progress is volatile: the host reports it again while the step runs, and a recovered saga sends the step
            // again, so it lives in memory and is published at most once a second; only step transitions are journaled.
            foreach (var e in decision.Events) _state = MigrationState.Apply(_state, e);
            PublishProgress();
            return;
        }

        var left = decision.Events.Count;
        var shareBefore = MigrationActions.DiskSpeed(_state);
        PersistAll(decision.Events, e =>
        {
            MigrationMetrics.Record(_state, e);
            _state = MigrationState.Apply(_state, e);
            MigrationMetrics.Track(_state);
            if (--left > 0) return;
            if (outcomeOf is { } persisted)
            {
                FaultPlan.Current.Hit(persisted, FaultMoment.OutcomePersisted);
                ReplayKept(persisted, FaultMoment.OutcomePersisted);
            }
            SnapshotIfDue();
            Publish();
            replyTo?.Tell(Accepted(command));
            Dispatch();
            if (command is SetMigrationSpeed) SendSpeeds();
            // a disk finished: the ones still moving share what it no longer uses (their mirrors at once)
            else if (MigrationActions.DiskSpeed(_state) != shareBefore) SendSpeeds(mirrorsOnly: true);
        });
    }

    /// <summary>The new speed to the copies and mirrors that run now; no answer comes back (hosts log what they did).</summary>
    private void SendSpeeds(bool mirrorsOnly = false)
    {
        foreach (var change in MigrationActions.SpeedChanges(_state, mirrorsOnly))
        {
            var target = change.Role == HostRole.Spm ? _hosts.Spm : _hosts.HsmFor(change.Vm);
            _log.Info("Migration {Migration}: speed {Speed} B/s to the {Role} for {Operation}", Id, change.SpeedBytesPerSecond, change.Role, change.Operation);
            target?.Tell(new SetStepSpeed(change.Operation, change.SpeedBytesPerSecond));
        }
    }

    private MigrationCommandAccepted Accepted(IMigrationCommand command) =>
        new(Id, command.GetType().Name, MigrationDecider.Describe(_state.Status));

    private void AfterRecovery()
    {
        MigrationMetrics.Track(_state);
        if (_state.Status is MigrationStatus.New)
            return;
        var inFlight = _state.Disks.Count(d => d.Phase == DiskPhase.InFlight);
        _log.Info("Migration {Migration} recovered at event {SequenceNr}: {Status}, {InFlight} step(s) in flight sent again with their operation ids",
            Id, LastSequenceNr, MigrationDecider.Describe(_state.Status), inFlight);
        if (_state.Status is not MigrationStatus.Queued && !_state.Status.IsFinished)
        {
            // the domains count at once; a host this node does not know yet is said again when the inventory names it
            var (host, domains) = Claim();
            _admission.Tell(new AdmissionHeld(Id, host, domains));
            NeedsLocating();
        }
        _recoveredQueued = _state.Status is MigrationStatus.Queued;
        Dispatch();
    }

    /// <summary>Send what the state asks for now: new steps, the retry timer, the admission request, the release.</summary>
    private void Dispatch()
    {
        if (!_vmWatched && _state.Request is { } request && !_state.Status.IsFinished)
        {
            // A pre-copy whose VM stops cannot finish: its saga hears of it (ReportVmStopped) instead of copying on.
            _vmWatched = true;
            _hosts.RejoinWatcher?.Tell(new WatchVmStops(Self, Id, request.Vm));
        }
        var actions = MigrationActions.Next(_state);
        var steps = actions.OfType<SendStep>().ToDictionary(s => s.Operation);

        foreach (var answered in _sent.Where(op => !steps.ContainsKey(op)).ToList())
        {
            _sent.Remove(answered);
            Timers.Cancel(DeadlineKey(answered));
        }
        foreach (var step in steps.Values)
            if (_sent.Add(step.Operation))
                Send(step);
        _stopsSent.RemoveWhere(op => !steps.ContainsKey(op));
        foreach (var stop in actions.OfType<SendStop>())
            if (_stopsSent.Add(stop.Operation))
                SendStop(stop);

        if (actions.OfType<WakeAt>().FirstOrDefault() is { } wake)
        {
            var delay = wake.DueAt - DateTimeOffset.UtcNow;
            Timers.StartSingleTimer(RetryTimer, new RetryDue(Id), delay > TimeSpan.Zero ? delay : TimeSpan.Zero);
        }
        else
            Timers.Cancel(RetryTimer);

        if (actions.OfType<RequestAdmission>().Any())
        {
            if (!_admissionAsked)
            {
                _admissionAsked = true;
                if (_recoveredQueued)
                    // the running ones recovering beside it re-announce their slots first (see the setting)
                    Timers.StartPeriodicTimer(AdmissionTimer, new AdmissionRetryDue(),
                        _settings.RecoveredQueuedAskDelay ?? MigrationActorSettings.DefaultRecoveredQueuedAskDelay, _settings.StepDeadline);
                else
                {
                    AskAdmission();
                    Timers.StartPeriodicTimer(AdmissionTimer, new AdmissionRetryDue(), _settings.StepDeadline);
                }
            }
        }
        else if (_admissionAsked)
        {
            _admissionAsked = false;
            Timers.Cancel(AdmissionTimer);
            // admitted: the limits hear it as held too, as an admit from a singleton that has since moved would leave this
            // one waiting, uncounted, in the queue of the new one it asked again
            if (_state.Status is not MigrationStatus.Queued && !_state.Status.IsFinished)
            {
                var (host, domains) = Claim();
                _admission.Tell(new AdmissionHeld(Id, host, domains));
            }
        }

        if (_state.Status.IsFinished && !_released)
        {
            _released = true;
            foreach (var step in _keptForReplay.Keys.Select(k => k.Step).Distinct().ToList())
                ReplayKept(step, FaultMoment.Ended);
            _admission.Tell(new AdmissionReleased(Id));
            PassivateIfIdle();
        }
    }

    /// <summary>The admission limits ask whether this migration still holds its slots (its release may have been lost).</summary>
    private void AnswerAdmissionCheck(IActorRef admission)
    {
        if (_state.Status is MigrationStatus.New || _state.Status.IsFinished)
        {
            admission.Tell(new AdmissionReleased(Id));
            PassivateIfIdle();
        }
        else if (_state.Status is not MigrationStatus.Queued)
        {
            var (host, domains) = Claim();
            admission.Tell(new AdmissionHeld(Id, host, domains));
        }
        // Queued: it asks again itself; an admit in flight to it must not be undone by this answer.
    }

    private void AskAdmission(IActorRef? limits = null)
    {
        if (NeedsLocating()) return; // asked when the inventory answers: a request without its host escapes the per-host limit
        var (host, domains) = Claim();
        (limits ?? _admission).Tell(new AdmissionRequest(Id, host, domains));
    }

    private (string? Host, ValueList<DomainId> Domains) Claim()
    {
        var domains = MigrationAdmission.DomainsOf(_state);
        return (_state.Request is { } request ? _hosts.HostOf(request.Vm) ?? _locatedHost : null, domains);
    }

    /// <summary>
    /// Whether the claim waits for the inventory to name the VM's host. This node's directory learns hosts only from
    /// changes: after a Coordinator's restart an idle VM's report changes nothing, and a claim without its host would
    /// not count on (or be held to) its host's limit. Asked once per incarnation; a claim goes without a host only when
    /// the inventory does not know the VM either.
    /// </summary>
    private bool NeedsLocating()
    {
        if (_state.Request is not { } request || _locateAnswered || _hosts.HostOf(request.Vm) is not null) return false;
        if (!_locating)
        {
            _locating = true;
            _hosts.LocateAsync(request.Vm).PipeTo(Self, success: host => new HostLocated(host), failure: _ => new HostLocated(null, Failed: true));
        }
        return true;
    }

    private void OnHostLocated(HostLocated located)
    {
        _locating = false;
        if (located.Failed)
        {
            // The inventory may be recovering or moving (a Coordinator restarted): a queued migration asks again with its
            // next admission retry, which locates first; a running one asks again itself.
            _log.Info("Migration {Migration}: the inventory did not say where VM {Vm} runs; asking again", Id, _state.Request?.Vm);
            if (_state.Status is not MigrationStatus.Queued && !_state.Status.IsFinished)
                Timers.StartSingleTimer(LocateTimer, new LocateAgain(), TimeSpan.FromSeconds(5));
            return;
        }
        _locateAnswered = true;
        _locatedHost = located.Host;
        if (located.Host is null)
            _log.Warning("Migration {Migration}: no host known for VM {Vm}; its admission claim names none", Id, _state.Request?.Vm);
        if (_state.Status is MigrationStatus.Queued)
        {
            if (_admissionAsked) AskAdmission();
        }
        else if (_state.Status is not MigrationStatus.New && !_state.Status.IsFinished)
        {
            var (host, domains) = Claim();
            _admission.Tell(new AdmissionHeld(Id, host, domains));
        }
    }

    private void Send(SendStep step)
    {
        FaultPlan.Current.Hit(step.Step, FaultMoment.BeforeSend);
        // The watcher tells only a stop it sees happen: a VM that stopped while this disk was elsewhere (its mirror's start
        // in flight, the migration suspended) is told now, as the copy that would wait for it begins.
        if (step.Step == MigrationStep.SyncInternalVolumes)
            _hosts.RejoinWatcher?.Tell(new WatchVmStops(Self, Id, step.Vm));
        var target = step.Role == HostRole.Spm ? _hosts.Spm : _hosts.HsmFor(step.Vm);
        if (target is null)
            _log.Warning("Migration {Migration}: no HSM known for VM {Vm}; {Operation} goes out when its deadline passes", Id, step.Vm, step.Operation);
        else
        {
            target.Tell(CommandOf(step));
            if (FaultPlan.Current.Fires(FaultAction.Duplicate, step.Step, FaultMoment.BeforeSend))
                target.Tell(CommandOf(step));
        }
        if (FaultPlan.Current.Names(FaultAction.ReplayLate, step.Step)) _keptForReplay.TryAdd((step.Step, step.Disk.Image), step);
        StartDeadline(step.Operation);
        // A host that had lost the step (restarted, or the SPM moved) starts it again: the stop follows it there.
        if (_stopsSent.Contains(step.Operation) && MigrationActions.Stops(_state).FirstOrDefault(s => s.Operation == step.Operation) is { } stop)
            SendStop(stop);
    }

    private void SendStop(SendStop stop)
    {
        _log.Info("Migration {Migration}: stopping {Operation} at the {Role}: {Reason}", Id, stop.Operation, stop.Role, stop.Reason);
        var target = stop.Role == HostRole.Spm ? _hosts.Spm : null;
        target?.Tell(new StopStep(stop.Operation, stop.Reason));
    }

    private static ExecuteStep CommandOf(SendStep step) =>
        new(step.Operation, step.Vm, step.Disk, step.Strategy, step.SpeedBytesPerSecond, step.CopyMode);

    /// <summary>Fault plan (tests only): an old copy of a kept command reaches its host late, as a slow network would deliver it.</summary>
    private void ReplayKept(MigrationStep step, FaultMoment moment)
    {
        var kept = _keptForReplay.Where(k => k.Key.Step == step).Select(k => k.Value).ToList();
        if (kept.Count == 0 || !FaultPlan.Current.Fires(FaultAction.ReplayLate, step, moment)) return;
        foreach (var old in kept)
        {
            var target = old.Role == HostRole.Spm ? _hosts.Spm : _hosts.HsmFor(old.Vm);
            _log.Warning("Migration {Migration}: fault plan replays the old command {Operation} late ({Moment})", Id, old.Operation, moment);
            // Answered to a witness that outlives this actor's passivation (so not a child), so the host's answer is seen in the log.
#pragma warning disable AK1008
            target?.Tell(CommandOf(old), Context.System.ActorOf(LateCommandWitness.Props(old.Operation)));
#pragma warning restore AK1008
        }
    }

    private void SendAgainIfUnanswered(OperationId operation)
    {
        if (!_sent.Contains(operation) || _state.DiskAwaiting(operation) is null)
            return;
        var step = MigrationActions.Next(_state).OfType<SendStep>().FirstOrDefault(s => s.Operation == operation);
        if (step is null)
            return;
        _log.Warning("Migration {Migration}: no answer to {Operation} within {Deadline}; sending it again", Id, operation, _settings.StepDeadline);
        Send(step);
    }

    private void StartDeadline(OperationId operation) =>
        Timers.StartSingleTimer(DeadlineKey(operation), new StepDeadlineDue(operation), _settings.StepDeadline);

    private static string DeadlineKey(OperationId operation) => $"deadline-{operation}";

    private void SnapshotIfDue()
    {
        if (_settings.SnapshotEvery > 0 && LastSequenceNr - _lastSnapshotAt >= _settings.SnapshotEvery)
        {
            _lastSnapshotAt = LastSequenceNr;
            SaveSnapshot(_state);
        }
    }

    /// <summary>Publishes now when the last publication is a second old, else once the second is over (one timer for all that comes meanwhile).</summary>
    private void PublishProgress()
    {
        var wait = _lastPublished + ProgressPublishInterval - DateTimeOffset.UtcNow;
        if (wait <= TimeSpan.Zero) Publish();
        else if (!Timers.IsTimerActive(ProgressTimer)) Timers.StartSingleTimer(ProgressTimer, new ProgressPublishDue(), wait);
    }

    private void Publish()
    {
        var now = DateTimeOffset.UtcNow;
        _lastPublished = now;
        Timers.Cancel(ProgressTimer);
        var changed = MigrationViews.StatusChangedOf(_state, now);
        if (_state.Status.IsFinished) changed = changed with { FinalView = MigrationViews.ViewOf(_state, now) };
        Context.System.EventStream.Publish(changed);
        if (_settings.PublishToCluster)
            DistributedPubSub.Get(Context.System).Mediator.Tell(new Publish(MigrationStatusChanged.Topic, changed));
    }

    /// <summary>A finished (or never started) migration leaves memory and the remembered entities; a later message brings it back from its journal.</summary>
    private void PassivateIfIdle()
    {
        if (_settings.PassivateWhenIdle && (_state.Status.IsFinished || _state.Status is MigrationStatus.New))
            Context.Parent.Tell(new Passivate(PoisonPill.Instance));
    }
}
