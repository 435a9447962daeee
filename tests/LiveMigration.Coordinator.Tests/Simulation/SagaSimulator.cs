using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;
using static LiveMigration.Shared.Migration.MigrationStep;

namespace LiveMigration.Coordinator.Tests.Simulation;

/// <summary>The first invariant a run broke, with the simulated time it broke at.</summary>
public sealed record Violation(string Invariant, string Detail, TimeSpan At);

/// <summary>What one seed did: its set-up, how it ended, the first violation (if any) and the whole trace.</summary>
public sealed record SimResult(int Seed, string Setup, string Ending, Violation? Violation, IReadOnlyList<string> Trace, int Events,
    IReadOnlyList<IMigrationEvent> Journal, IReadOnlySet<string> Notes)
{
    public bool Failed => Violation is not null;
    public string Report() =>
        $"seed {Seed}: {Setup}\n{(Violation is { } v ? $"VIOLATION {v.Invariant} at {v.At.TotalSeconds:0.###}s: {v.Detail}" : "ok")}; ending: {Ending}\n" +
        string.Join("\n", Trace);
}

/// <summary>How much goes wrong in a run; each knob is a probability per opportunity.</summary>
public sealed record Chaos(
    double HostFault = 0.12,
    double EffectThenFail = 0.3,
    double LoseReply = 0.05,
    double DuplicateReply = 0.08,
    double SlowReply = 0.08,
    double LateCommand = 0.06,
    double CrashAfterPersist = 0.03,
    int MaxCrashes = 3,
    double KillVm = 0.15,
    double Cancel = 0.2,
    double MirrorFails = 0.08,
    int MaxSpuriousRetryDue = 2,
    int MaxHostRestarts = 2,
    /// <summary>After this much simulated time no new fault is injected, so every run ends.</summary>
    double CalmAfterSeconds = 900,
    /// <summary>Faults on the switch steps (pivot, live snapshot) and VM deaths: off, to look past the bugs they hit.</summary>
    bool SwitchFaults = true,
    /// <summary>How many times the operator resumes a suspended migration before abandoning it.</summary>
    int MaxResumes = 3,
    /// <summary>Make a StepStarted that repeats the step already in flight a violation (a note otherwise).</summary>
    bool StrictJournal = false)
{
    /// <summary>Nothing goes wrong unless a scenario says so.</summary>
    public static readonly Chaos None = new(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);

    /// <summary>From LSM_SIM_CHAOS: "noswitch" turns the switch faults off (to explore past the known switch bugs).</summary>
    /// <summary>"heavy" raises every fault rate and abandons at once (to shake out rarer sequences).</summary>
    public static Chaos FromEnvironment() => Environment.GetEnvironmentVariable("LSM_SIM_CHAOS") switch
    {
        "noswitch" => new Chaos(SwitchFaults: false, KillVm: 0),
        "heavy" => new Chaos(HostFault: 0.3, LoseReply: 0.1, DuplicateReply: 0.2, SlowReply: 0.2, LateCommand: 0.15, CrashAfterPersist: 0.1,
            KillVm: 0.3, Cancel: 0.4, MirrorFails: 0.2, MaxSpuriousRetryDue: 4, MaxHostRestarts: 4, MaxResumes: 1),
        // heavy, with hosts that never forget an operation id (what durable idempotency would give): H1 cannot happen
        "heavy-durable" => new Chaos(HostFault: 0.3, LoseReply: 0.1, DuplicateReply: 0.2, SlowReply: 0.2, LateCommand: 0.15, CrashAfterPersist: 0.1,
            KillVm: 0.3, Cancel: 0.4, MirrorFails: 0.2, MaxSpuriousRetryDue: 4, MaxHostRestarts: 0, MaxResumes: 1),
        _ => new Chaos(),
    };
}

/// <summary>
/// A deterministic simulation of one migration: the saga (<see cref="MigrationDecider"/>, <see cref="MigrationState"/>,
/// <see cref="MigrationActions"/>) inside a model of <see cref="MigrationActor"/> (persist what Decide returns, send what
/// Next asks for, deadlines, the retry timer, recovery from the journal), the hosts (ledgers of operation ids over
/// <see cref="SimWorld"/>), a network that loses, repeats, delays and reorders, and an operator. Everything comes from
/// one <see cref="Random"/> seeded with the run's seed. Invariants (DESIGN §7) are checked after every event; the run
/// stops at the first violation.
/// </summary>
public sealed class SagaSimulator
{
    private static readonly DateTimeOffset T0 = new(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);
    private static readonly TimeSpan StepDeadline = MigrationActorSettings.Default.StepDeadline;
    private const int MaxEvents = 20_000;

    private readonly Random _rng;
    private readonly Chaos _chaos;
    private readonly List<string> _trace = [];
    private readonly PriorityQueue<Ev, (long, long)> _queue = new();
    private long _seq;
    private TimeSpan _now;
    private Violation? _violation;
    /// <summary>Things seen on the way that explain a violation or are worth reporting without failing a run.</summary>
    private readonly HashSet<string> _notes = [];

    public int Seed { get; }
    public SimWorld World { get; } = new();
    public MigrationId Id { get; } = new(new Guid(0x5ea50000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1));
    public VmId Vm { get; } = new(new Guid(0x5ea50000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2));
    public DomainId Source { get; } = new(new Guid(0x5ea50000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3));
    public DomainId Destination { get; } = new(new Guid(0x5ea50000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4));
    public MigrationRequest Request { get; }

    // ---- the actor around the saga ----
    public MigrationState State { get; private set; }
    public List<IMigrationEvent> Journal { get; } = [];
    private readonly HashSet<OperationId> _sent = [];
    /// <summary>MigrationActor._stopsSent: the copies this incarnation asked to stop.</summary>
    private readonly HashSet<OperationId> _stopsSent = [];
    /// <summary>Every command the actor ever sent, so a scenario can deliver an old copy of one late.</summary>
    private readonly Dictionary<OperationId, SendStep> _everSent = new();
    private readonly Dictionary<OperationId, long> _deadlines = new();
    private long? _retryTimer;
    private int _incarnation;
    private bool _admissionAsked;

    // ---- the hosts ----
    private readonly HostLedger _spm = new(), _hsm = new();
    /// <summary>SpmActor: stops that came before their step (it is answered STEP_STOPPED without running); lost with a restart.</summary>
    private readonly HashSet<OperationId> _spmStopsAhead = [];
    /// <summary>Per disk: the last answer to its switch step (null: none yet, "ok", or the failure code).</summary>
    private readonly Dictionary<ImageId, string?> _switchAnswer = new();

    // ---- the operator ----
    private int _resumes;
    private bool _operatorPending;
    private int _crashes;

    private DateTimeOffset Now => T0 + _now;
    private bool Calm => _now.TotalSeconds > _chaos.CalmAfterSeconds;

    /// <summary>Traces cost most of a run's time: a sweep runs without, and replays a failing seed with them.</summary>
    private readonly bool _tracing;

    public SagaSimulator(int seed, Chaos? chaos = null, MigrationStrategy? strategy = null, int? disks = null, int? parallel = null, bool trace = true)
    {
        Seed = seed;
        _tracing = trace;
        _rng = new Random(seed);
        _chaos = chaos ?? new Chaos();
        var strat = strategy ?? (_rng.Next(2) == 0 ? MigrationStrategy.PreCopy : MigrationStrategy.PostCopy);
        var diskCount = disks ?? _rng.Next(1, 4);
        var par = parallel ?? _rng.Next(1, 3);
        var images = Enumerable.Range(0, diskCount).Select(i => new ImageId(new Guid(0x1a000000 + i, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))).ToList();
        Request = new MigrationRequest(Vm, images.Select(i => new DiskMoveRequest(i, Destination)).ToValueList(), strat, 0,
            CopyMode.Background, par, DeleteSource: true, new RetryPolicy(3, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(8)));
        State = MigrationState.Initial(Id);
        World.PreCopy = strat == MigrationStrategy.PreCopy;
        World.Violate = (invariant, detail) => Fail(invariant, detail);
        World.MirrorStarted = disk => At(TimeSpan.FromSeconds(MirrorReadyAfter?.Invoke(disk) ?? 1 + _rng.NextDouble() * 40), new MirrorReadyEv(disk.Image));
        foreach (var image in images)
        {
            var internals = _rng.Next(0, 3);
            World.AddDisk(new DiskPlan(image, Source, Destination, 1L << 30, MigrationDecider.NewLeafId(Id, image)), internals);
        }
    }

    public string Setup => $"{Request.Strategy}, {Request.Disks.Count} disk(s) ({string.Join(",", World.Disks.Values.Select(d => $"{d.Internals + 1} layers"))}), parallel {Request.MaxParallelDisks}";

    // ---- running ----------------------------------------------------------------------------------

    /// <summary>Runs the seed's random migration to its end (or first violation).</summary>
    public SimResult Run()
    {
        Start();
        // The faults that are not answers to something: planned up front from the seed.
        for (var i = 0; i < _chaos.MaxCrashes; i++)
            if (_rng.NextDouble() < 0.5) At(Rand(0, 400), new CrashEv());
        if (_rng.NextDouble() < _chaos.KillVm) At(Rand(0, 300), new KillVmEv());
        if (_rng.NextDouble() < _chaos.Cancel) At(Rand(0, 200), new OperatorEv(new CancelMigration(Id)));
        for (var i = 0; i < _chaos.MaxSpuriousRetryDue; i++)
            if (_rng.NextDouble() < 0.3) At(Rand(0, 300), new EarlyRetryTimerEv());
        for (var i = 0; i < _chaos.MaxHostRestarts; i++)
            if (_rng.NextDouble() < 0.2) At(Rand(0, 300), new HostRestartEv(_rng.Next(2) == 0 ? HostRole.Spm : HostRole.Hsm));
        return Drain();
    }

    /// <summary>Start and let the admission answer (as the limits do).</summary>
    public void Start()
    {
        foreach (var disk in World.Disks.Values) At(Rand(1, 5), new GuestWriteEv(disk.Image));
        var facts = new ValidationFacts(new VmFacts(Vm, true, World.Disks.Values.Select(d => new DiskFacts(d.Image, Source, 1L << 30)).ToValueList()),
            [new DomainFacts(Source, true, 1L << 40), new DomainFacts(Destination, true, 1L << 40)], ValueList<ImageId>.Empty);
        Handle(new StartMigration(Id, Request, facts), "operator");
    }

    /// <summary>Processes events until none is left, the saga stalls, or an invariant breaks; then checks the end state.</summary>
    public SimResult Drain()
    {
        var events = 0;
        while (_violation is null && _queue.TryDequeue(out var ev, out var key))
        {
            if (++events > MaxEvents)
            {
                Fail("no-end", $"still {MigrationDecider.Describe(State.Status)} after {MaxEvents} events");
                break;
            }
            _now = TimeSpan.FromTicks(key.Item1);
            Process(ev);
            if (_violation is null) CheckAfterEvent();
        }
        if (_violation is null) CheckEnd();
        return new SimResult(Seed, Setup, Ending(), _violation, _trace, events, Journal, _notes);
    }

    private string Ending() =>
        $"{MigrationDecider.Describe(State.Status)}; VM {(World.VmRunning ? "running" : "dead")}; " +
        string.Join("; ", World.Disks.Values.Select(d => $"disk {Short(d.Image)} {State.Disks.FirstOrDefault(s => s.Image == d.Image)?.Phase}: {d}"));

    private void Process(Ev ev)
    {
        switch (ev)
        {
            case DeliverCommandEv c:
                DeliverCommand(c.Step, c.Late);
                break;
            case DeliverReplyEv r:
                Log($"saga <- {Describe(r.Reply)}{(r.Copy ? " (duplicate)" : "")}");
                Handle(r.Reply, "host");
                break;
            case DeadlineEv d when d.Incarnation == _incarnation && _deadlines.GetValueOrDefault(d.Operation) == d.Id:
                _deadlines.Remove(d.Operation);
                if (_sent.Contains(d.Operation) && State.DiskAwaiting(d.Operation) is not null
                    && MigrationActions.Next(State).OfType<SendStep>().FirstOrDefault(s => s.Operation == d.Operation) is { } again)
                {
                    Log($"deadline: {Op(d.Operation)} unanswered, sent again");
                    Send(again);
                }
                break;
            case RetryTimerEv t when t.Incarnation == _incarnation && _retryTimer == t.Id:
                _retryTimer = null;
                Log("retry timer fired");
                Handle(new RetryDue(Id), "timer");
                break;
            case EarlyRetryTimerEv when _retryTimer is not null:
                // The one retry timer fires before the time Decide compares with: the actor computes its delay from
                // the wall clock (DateTimeOffset.UtcNow), the scheduler counts monotonic time, and clocks step.
                _retryTimer = null;
                Log("retry timer fires early (wall clock stepped back / timer jitter)");
                if (!Handle(new RetryDue(Id), "timer")) _notes.Add("early-retry-timer-ignored");
                break;
            case AdmitEv:
                Handle(new AdmitMigration(Id), "limits");
                break;
            case MirrorReadyEv m:
            {
                var disk = World.Disks[m.Image];
                if (!disk.MirrorRunning || disk.MirrorReady) break;
                if (!Calm && _rng.NextDouble() < _chaos.MirrorFails)
                {
                    Log($"world: mirror of {Short(m.Image)} FAILS (out of space)");
                    World.MirrorFails(disk);
                    FinishWaits(m.Image, new HostAnswer.Fail(ErrorCodes.JobFailed, "the mirror failed: no space", false));
                    break;
                }
                World.MirrorBecomesReady(disk);
                Log($"world: mirror of {Short(m.Image)} READY");
                FinishWaits(m.Image, new HostAnswer.Ok(new StepOutcome(1L << 30, "mirror READY")));
                break;
            }
            case MirrorFailEv m when World.Disks[m.Image].MirrorRunning:
                Log($"world: mirror of {Short(m.Image)} FAILS (out of space)");
                World.MirrorFails(World.Disks[m.Image]);
                FinishWaits(m.Image, new HostAnswer.Fail(ErrorCodes.JobFailed, "the mirror failed: no space", false));
                break;
            case PivotLandsEv p when World.Disks[p.Image] is { PivotPending: true } pending:
                Log($"world: the timed-out pivot of {Short(p.Image)} lands: QEMU now writes on the destination");
                _notes.Add("pivot-landed-late");
                World.CompletePivot(pending);
                break;
            case GuestWriteEv w:
                World.GuestWrite(World.Disks[w.Image]);
                if (!State.Status.IsFinished && World.VmRunning) At(Rand(2, 10), w);
                break;
            case KillVmEv when !Calm && World.VmRunning:
                Log("world: the VM's QEMU dies");
                KillVm();
                break;
            case CopyLandsEv c when _spm.Waiting.Remove(c.Operation):
            {
                var answer = World.Execute(c.Operation.Step, World.Disks[c.Operation.Image]);
                _spm.Finished[c.Operation] = answer;
                Log($"Spm: the copy of {Op(c.Operation)} ends: {Describe(answer)}");
                Reply(c.Operation, answer);
                break;
            }
            case DeliverStopEv stop:
                DeliverStop(stop.Operation, stop.Late);
                break;
            case VmStoppedReportEv when !World.VmRunning:
                Log("watcher: the host reports the VM stopped");
                Handle(new ReportVmStopped(Id, Vm, "host-1"), "watcher");
                break;
            case CrashEv when !Calm && !State.Status.IsFinished:
                Crash("coordinator crashes");
                break;
            case ReplayLateEv r:
                var old = _everSent.Values.Where(x => x.Operation.Step == r.Step && x.Operation.Image == r.Image).MinBy(x => x.Operation.Attempt);
                if (old is not null) DeliverCommand(old, late: true);
                break;
            case HostRestartEv h when !Calm || h.Scripted:
                Log($"{h.Role} restarts: its ledger (operation ids, mirror waits, copies: killed) is forgotten");
                (h.Role == HostRole.Spm ? _spm : _hsm).Forget();
                if (h.Role == HostRole.Spm) _spmStopsAhead.Clear();
                break;
            case OperatorEv o:
                if (o.Command is CancelMigration && Calm) break;
                if (o.Command is ResumeMigration or AbandonMigration) _operatorPending = false;
                Log($"operator: {o.Command.GetType().Name}");
                Handle(o.Command, "operator");
                if (o.Command is AbandonMigration && State.Status is MigrationStatus.Suspended)
                {
                    // Refused (the disk would be left unsafe): the refusal tells the operator to resume.
                    _operatorPending = true;
                    At(Rand(20, 120), new OperatorEv(new ResumeMigration(Id)));
                }
                break;
        }
    }

    // ---- the actor ---------------------------------------------------------------------------------

    /// <summary>MigrationActor.Handle: decide; nothing to persist means nothing is sent; else persist, apply, dispatch.</summary>
    /// <returns>Whether anything was persisted.</returns>
    public bool Handle(IMigrationCommand command, string from)
    {
        var decision = MigrationDecider.Decide(State, command, Now);
        if (decision.Refused)
        {
            if (from == "operator") Log($"   refused {command.GetType().Name}: {decision.RefusalCode}");
            return false;
        }
        if (decision.Events.Count == 0)
        {
            // MigrationActor.Handle: a timer that fired a moment early (nothing due yet) is armed again.
            if (command is RetryDue) Dispatch();
            return false;
        }
        foreach (var e in decision.Events)
        {
            CheckEvent(e);
            Journal.Add(e);
            State = MigrationState.Apply(State, e);
            Log($"   + {DescribeEvent(e)}");
        }
        foreach (var e in decision.Events) AfterEvent?.Invoke(this, e);
        if (from == "host" && !Calm && _crashes < _chaos.MaxCrashes && _rng.NextDouble() < _chaos.CrashAfterPersist)
        {
            Crash("coordinator crashes right after persisting, before sending");
            return true;
        }
        Dispatch();
        return true;
    }

    /// <summary>For scenarios: called with each event the saga persisted, before the actor sends anything for it.</summary>
    public Action<SagaSimulator, IMigrationEvent>? AfterEvent { get; set; }

    /// <summary>MigrationActor.Dispatch.</summary>
    private void Dispatch()
    {
        var actions = MigrationActions.Next(State);
        var steps = actions.OfType<SendStep>().ToDictionary(s => s.Operation);
        foreach (var answered in _sent.Where(op => !steps.ContainsKey(op)).ToList())
        {
            _sent.Remove(answered);
            _deadlines.Remove(answered);
        }
        foreach (var step in steps.Values)
            if (_sent.Add(step.Operation))
                Send(step);
        _stopsSent.RemoveWhere(op => !steps.ContainsKey(op));
        foreach (var stop in actions.OfType<SendStop>())
            if (_stopsSent.Add(stop.Operation))
                SendStop(stop.Operation);

        if (actions.OfType<WakeAt>().FirstOrDefault() is { } wake)
        {
            var id = ++_seq;
            _retryTimer = id;
            var delay = wake.DueAt - Now;
            At(delay > TimeSpan.Zero ? delay : TimeSpan.Zero, new RetryTimerEv(_incarnation, id));
        }
        else
            _retryTimer = null;

        if (actions.OfType<RequestAdmission>().Any() && !_admissionAsked)
        {
            _admissionAsked = true;
            At(Rand(0.1, 2), new AdmitEv());
        }

        if (State.Status is MigrationStatus.Suspended && !_operatorPending)
        {
            _operatorPending = true;
            IMigrationCommand next = _resumes < _chaos.MaxResumes && _rng.NextDouble() < 0.7 ? new ResumeMigration(Id) : new AbandonMigration(Id);
            if (next is ResumeMigration) _resumes++;
            At(Rand(20, 120), new OperatorEv(next));
        }
    }

    private void Send(SendStep step)
    {
        _everSent[step.Operation] = step;
        Log($"saga -> {step.Role} {Op(step.Operation)}");
        At(NetDelay(), new DeliverCommandEv(step, false));
        if (!Calm && _rng.NextDouble() < _chaos.LateCommand)
            At(Rand(30, 400), new DeliverCommandEv(step, true));
        var id = ++_seq;
        _deadlines[step.Operation] = id;
        At(StepDeadline, new DeadlineEv(step.Operation, _incarnation, id));
        if (_stopsSent.Contains(step.Operation) && MigrationActions.Stops(State).Any(s => s.Operation == step.Operation))
            SendStop(step.Operation);
    }

    /// <summary>MigrationActor.SendStop: to the SPM, which answers the step itself.</summary>
    private void SendStop(OperationId op)
    {
        Log($"saga -> Spm stop {Op(op)}");
        At(NetDelay(), new DeliverStopEv(op, false));
        if (!Calm && _rng.NextDouble() < _chaos.LateCommand)
            At(Rand(30, 400), new DeliverStopEv(op, true));
    }

    /// <summary>The actor dies and comes back: state from the journal alone, every step in flight sent again (AfterRecovery).</summary>
    private void Crash(string why)
    {
        _crashes++;
        _incarnation++;
        _sent.Clear();
        _stopsSent.Clear();
        _deadlines.Clear();
        _retryTimer = null;
        _admissionAsked = false;
        var recovered = MigrationState.Replay(Id, Journal);
        if (!recovered.Equals(State))
            Fail("replay-divergence", $"the state rebuilt from {Journal.Count} events differs from the one before the crash");
        State = recovered;
        Log($"{why}; recovered from {Journal.Count} events: {MigrationDecider.Describe(State.Status)}");
        _operatorPending = false;
        Dispatch();
        // the restarted node's watcher tells the recovered saga of a VM its host reports stopped
        if (!World.VmRunning) At(Rand(0.5, 5), new VmStoppedReportEv());
    }

    // ---- the hosts ---------------------------------------------------------------------------------

    private void DeliverCommand(SendStep step, bool late)
    {
        var op = step.Operation;
        var ledger = step.Role == HostRole.Spm ? _spm : _hsm;
        var tag = late ? " (an old copy, delivered late)" : "";
        if (ledger.Finished.TryGetValue(op, out var remembered))
        {
            Log($"{step.Role} <- {Op(op)}{tag}: repeated, answers its remembered result");
            Reply(op, remembered);
            return;
        }
        var disk = World.Disks[step.Disk.Image];
        if (late && !ledger.Waiting.Contains(op) && State.DiskAwaiting(op) is null) _notes.Add("late-command-reexecuted");
        if (step.Role == HostRole.Spm && _spm.Waiting.Contains(op))
        {
            Log($"Spm <- {Op(op)}{tag}: attached to its running copy");
            return;
        }
        if (step.Role == HostRole.Spm && _spmStopsAhead.Contains(op))
        {
            var stopped = new HostAnswer.Fail(ErrorCodes.StepStopped, "its stop came before it: it did not run", false);
            Log($"Spm <- {Op(op)}{tag}: {Describe(stopped)}");
            _spm.Finished[op] = stopped;
            Reply(op, stopped);
            return;
        }
        if (op.Step == DeleteDestinationImage && _spm.Waiting.Where(o => o.Image == op.Image).Select(o => (OperationId?)o).FirstOrDefault() is { } writing)
        {
            // SpmActor: a volume a qemu-img has open is not deleted (VOLUME_IN_USE, transient): the delete never races a copy.
            _notes.Add("delete-waited-for-copy");
            var inUse = new HostAnswer.Fail(ErrorCodes.VolumeInUse, $"the copy of {Op(writing)} has the image open", true);
            Log($"Spm <- {Op(op)}{tag}: {Describe(inUse)}");
            _spm.Finished[op] = inUse;
            Reply(op, inUse);
            return;
        }
        if (ledger.Waiting.Contains(op))
        {
            // A repeated mirror wait reads the job once more (HsmActor: Attached → SampleMirror).
            Log($"{step.Role} <- {Op(op)}{tag}: attached to the running wait");
            if (!World.VmRunning) FinishWait(op, new HostAnswer.Fail(ErrorCodes.VmNotRunning, "QEMU is gone", false));
            else if (!disk.MirrorRunning) FinishWait(op, new HostAnswer.Fail(ErrorCodes.NoSuchJob, "no mirror to wait for", false));
            else if (disk.MirrorReady) FinishWait(op, new HostAnswer.Ok(new StepOutcome(1L << 30, "mirror READY")));
            return;
        }

        HostAnswer answer;
        var fault = Script.Remove((op.Step, op.Attempt), out var forced) ? forced : RandomFault(step);
        switch (fault)
        {
            case Fault.None when StopStep.Stops(op.Step) && !disk.DestinationEnded:
                // A copy of the internal layers takes a while: its answer comes when it lands, or when a stop ends it.
                _spm.Waiting.Add(op);
                At(TimeSpan.FromSeconds(CopyTakes?.Invoke(op) ?? 0.2 + _rng.NextDouble() * 40), new CopyLandsEv(op));
                Log($"{step.Role} <- {Op(op)}{tag}: copying");
                return;
            case Fault.None:
                answer = World.Execute(op.Step, disk);
                Log($"{step.Role} <- {Op(op)}{tag}: {Describe(answer)}");
                break;
            case Fault.FailTransient or Fault.FailPermanent:
                answer = fault == Fault.FailTransient
                    ? new HostAnswer.Fail(Pick(ErrorCodes.Timeout, ErrorCodes.IoError), "injected transient failure", true)
                    : step.Role == HostRole.Spm
                        ? new HostAnswer.Fail(Pick(ErrorCodes.NotEnoughSpace, ErrorCodes.VerifyFailed, ErrorCodes.QemuImgFailed), "injected permanent failure", false)
                        : new HostAnswer.Fail(Pick(ErrorCodes.QmpError, ErrorCodes.JobFailed), "injected permanent failure", false);
                Log($"{step.Role} <- {Op(op)}{tag}: NOT done, answers {Describe(answer)}");
                break;
            case Fault.TimeoutThenPivotLater when op.Step == Pivot && World.VmRunning && disk.MirrorRunning && disk.MirrorReady:
                disk.Pending = new VolKey(Side.Dst, SimDisk.Leaf);
                disk.PivotPending = true;
                At(Rand(0.2, 20), new PivotLandsEv(disk.Image));
                answer = new HostAnswer.Fail(ErrorCodes.Timeout, "block job did not end within the command timeout (block-job-complete was issued)", true);
                Log($"{step.Role} <- {Op(op)}{tag}: block-job-complete issued, answers {Describe(answer)}; the pivot may still land");
                break;
            default:
            {
                // The work happened; its answer says otherwise (a timeout, QEMU dying right after, a failed read-back).
                var recorded = disk.RecordLeaf;
                var done = World.Execute(op.Step, disk);
                if (done is HostAnswer.Ok && MigrationPlan.IsSwitch(op.Step) && recorded != disk.Open[^1])
                {
                    // the failure came before RecordLeafAsync: the record still shows the switch as begun (unless the
                    // record named the target already, when BeginSwitch wrote no intent)
                    disk.RecordLeaf = recorded;
                    disk.Pending = disk.Open[^1];
                }
                if (done is not HostAnswer.Ok)
                    answer = done;
                else if (fault == Fault.DoneThenVmDies && SimWorld.RunsOnHsm(op.Step))
                {
                    KillVm();
                    answer = new HostAnswer.Fail(ErrorCodes.VmNotRunning, "QEMU died right after the command", false);
                }
                else if (fault == Fault.DoneThenQmpError && SimWorld.RunsOnHsm(op.Step))
                    answer = new HostAnswer.Fail(ErrorCodes.QmpError, "the read-back after the command failed", false);
                else
                    answer = new HostAnswer.Fail(ErrorCodes.Timeout, "the port call timed out (the work went on)", true);
                Log($"{step.Role} <- {Op(op)}{tag}: DONE, but answers {Describe(answer)}");
                break;
            }
        }

        if (answer is HostAnswer.Pending)
        {
            ledger.Waiting.Add(op);
            return;
        }
        ledger.Finished[op] = answer;
        Reply(op, answer);
    }

    /// <summary>How a host call goes wrong, when a test forces it or the dice do.</summary>
    public enum Fault
    {
        None, FailTransient, FailPermanent, DoneThenTimeout, DoneThenVmDies, DoneThenQmpError,
        /// <summary>Pivot only: block-job-complete was issued, the job did not end within the HSM's timeout (TIMEOUT), and it lands later.</summary>
        TimeoutThenPivotLater,
    }

    /// <summary>Forced outcomes for hand-written scenarios: (step, attempt) → fault, used once at the first delivery.</summary>
    public Dictionary<(MigrationStep Step, int Attempt), Fault> Script { get; } = new();

    private Fault RandomFault(SendStep step)
    {
        if (Calm || step.Step == WaitMirrorReady || _rng.NextDouble() >= _chaos.HostFault) return Fault.None;
        if (!_chaos.SwitchFaults && MigrationPlan.IsSwitch(step.Step)) return Fault.None;
        if (_rng.NextDouble() < _chaos.EffectThenFail)
            return !SimWorld.RunsOnHsm(step.Step) ? Fault.DoneThenTimeout
                : _chaos.SwitchFaults ? (Fault)_rng.Next(4) + 3
                : _rng.Next(2) == 0 ? Fault.DoneThenTimeout : Fault.DoneThenQmpError;
        return _rng.Next(3) < 2 ? Fault.FailTransient : Fault.FailPermanent;
    }

    /// <summary>SpmActor.OnStopStep: a running copy ends (its qemu-img reaped) and answers STEP_STOPPED; an unknown one is kept.</summary>
    private void DeliverStop(OperationId op, bool late)
    {
        var tag = late ? " (an old copy, delivered late)" : "";
        if (_spm.Waiting.Remove(op))
        {
            var stopped = new HostAnswer.Fail(ErrorCodes.StepStopped, "its copy was killed and has ended", false);
            Log($"Spm <- stop {Op(op)}{tag}: {Describe(stopped)}");
            _spm.Finished[op] = stopped;
            Reply(op, stopped);
        }
        else if (!_spm.Finished.ContainsKey(op) && _spmStopsAhead.Add(op))
            Log($"Spm <- stop {Op(op)}{tag}: not running here; kept for its command");
    }

    private void KillVm()
    {
        World.KillVm();
        At(Rand(0.5, 10), new VmStoppedReportEv());
        foreach (var image in World.Disks.Keys)
            FinishWaits(image, new HostAnswer.Fail(ErrorCodes.VmNotRunning, "VM stopped during the mirror", false));
    }

    // ---- for hand-written scenarios ----
    public void OperatorAt(double seconds, IMigrationCommand command) => AtAbsolute(seconds, new OperatorEv(command));
    public void EarlyRetryTimerAt(double seconds) => AtAbsolute(seconds, new EarlyRetryTimerEv());
    public void CrashAt(double seconds) => AtAbsolute(seconds, new CrashEv());
    public void KillVmAt(double seconds) => AtAbsolute(seconds, new KillVmEv());
    public void KillVmIn(double seconds) => At(TimeSpan.FromSeconds(seconds), new KillVmEv());
    public void CrashIn(double seconds) => At(TimeSpan.FromSeconds(seconds), new CrashEv());
    /// <summary>For scenarios: seconds a copy of the internal layers takes (default: 0.2-40.2 s at random).</summary>
    public Func<OperationId, double>? CopyTakes { get; set; }
    /// <summary>For scenarios: seconds from a mirror's start to READY (default: 1-41 s at random).</summary>
    public Func<SimDisk, double>? MirrorReadyAfter { get; set; }
    public void LandPivotIn(double seconds, ImageId image) => At(TimeSpan.FromSeconds(seconds), new PivotLandsEv(image));
    /// <summary>For scenarios: an old copy of the (first sent) command of <paramref name="step"/> for <paramref name="image"/> reaches its host.</summary>
    public void ReplayLateIn(double seconds, MigrationStep step, ImageId image) => At(TimeSpan.FromSeconds(seconds), new ReplayLateEv(step, image));
    /// <summary>For scenarios: a host restarts and forgets its ledger (its durable VM record stays).</summary>
    public void RestartHostIn(double seconds, HostRole role) => At(TimeSpan.FromSeconds(seconds), new HostRestartEv(role, Scripted: true));
    public void FailMirrorIn(double seconds, ImageId image) => At(TimeSpan.FromSeconds(seconds), new MirrorFailEv(image));
    public void OperatorIn(double seconds, IMigrationCommand command) => At(TimeSpan.FromSeconds(seconds), new OperatorEv(command));
    public void EarlyRetryTimerIn(double seconds) => At(TimeSpan.FromSeconds(seconds), new EarlyRetryTimerEv());
    private void AtAbsolute(double seconds, Ev ev) => _queue.Enqueue(ev, (TimeSpan.FromSeconds(seconds).Ticks, ++_seq));

    private void FinishWaits(ImageId image, HostAnswer answer)
    {
        foreach (var op in _hsm.Waiting.Where(o => o.Image == image).ToList())
            FinishWait(op, answer);
    }

    private void FinishWait(OperationId op, HostAnswer answer)
    {
        _hsm.Waiting.Remove(op);
        _hsm.Finished[op] = answer;
        Log($"Hsm: {Op(op)} ends: {Describe(answer)}");
        Reply(op, answer);
    }

    private void Reply(OperationId op, HostAnswer answer)
    {
        if (op.Step is Pivot or LiveSnapshotToDestination)
            _switchAnswer[op.Image] = answer is HostAnswer.Fail f ? f.Code : "ok";
        if (op.Step is ProbeSwitch && answer is HostAnswer.Ok { Outcome.Switch: { } finding })
            _switchAnswer[op.Image] = $"probe:{finding}";
        IMigrationCommand reply = answer switch
        {
            HostAnswer.Ok ok => new ReportStepSucceeded(Id, op, ok.Outcome),
            HostAnswer.Fail f => new ReportStepFailed(Id, op, f.Code, f.Message, f.Transient),
            _ => throw new InvalidOperationException("a pending answer is not sent"),
        };
        if (!Calm && _rng.NextDouble() < _chaos.LoseReply)
        {
            Log($"   network loses the answer to {Op(op)}");
            return;
        }
        var slow = !Calm && _rng.NextDouble() < _chaos.SlowReply;
        At(slow ? Rand(5, 60) : NetDelay(), new DeliverReplyEv(reply, false));
        if (!Calm && _rng.NextDouble() < _chaos.DuplicateReply)
            At(Rand(0.01, 50), new DeliverReplyEv(reply, true));
    }

    // ---- invariants --------------------------------------------------------------------------------

    /// <summary>DESIGN §7.4: answers that leave a switch's effect unknown (timeout, QEMU gone, connection lost).</summary>
    private static readonly HashSet<string> UnknownOutcome =
        [ErrorCodes.Timeout, ErrorCodes.IoError, ErrorCodes.VmNotRunning, ErrorCodes.VmNotFound];

    /// <summary>Decisions checked as the saga persists them, before they take effect anywhere.</summary>
    private void CheckEvent(IMigrationEvent e)
    {
        if (e is StepStarted again && State.Disks.FirstOrDefault(d => d.Image == again.Image) is { Phase: DiskPhase.InFlight } current
            && current.Operation == again.Operation)
        {
            _notes.Add($"duplicate-step-started:{again.Step}");
            if (_chaos.StrictJournal)
                Fail("duplicate-step-started", $"disk {Short(again.Image)}: {Op(again.Operation)} started again in the same decision while already in flight");
        }
        if (e is StepStarted { Step: DeleteDestinationImage } start)
        {
            // The truth: does the drive run on anything on the destination right now?
            var world = World.Disks[start.Image];
            if (world.Open.Any(k => k.Side == Side.Dst))
                Fail("rollback-deletes-running-destination",
                    $"disk {Short(start.Image)}: DeleteDestinationImage decided while the drive has {string.Join(",", world.Open)} open");
            var disk = State.Disk(start.Image);
            if (disk.Started.Any(MigrationPlan.IsSwitch))
            {
                // What the saga knows: since the switch was last sent, did a probe find the drive on the source?
                var lastSwitch = Journal.FindLastIndex(x => x is StepStarted st && st.Image == start.Image && MigrationPlan.IsSwitch(st.Step));
                var probedOnSource = Journal.Skip(lastSwitch + 1).Any(x => x is StepCompleted { Step: ProbeSwitch, Outcome.Switch: SwitchFinding.OnSource } c && c.Image == start.Image);
                if (!probedOnSource)
                    Fail("blind-rollback-after-switch",
                        $"disk {Short(start.Image)}: DeleteDestinationImage decided after the switch was sent, with no probe since that found the drive on the source " +
                        $"(last host answer to the switch: {_switchAnswer.GetValueOrDefault(start.Image) ?? "none"}; DESIGN §7.4: the saga must ask, not assume)");
            }
        }
        if (e is StepStarted { Step: DeleteSourceImage } del)
        {
            var world = World.Disks[del.Image];
            if (world.Open.Any(k => k.Side == Side.Src))
                Fail("delete-source-in-use", $"disk {Short(del.Image)}: DeleteSourceImage decided while the drive has {string.Join(",", world.Open)} open");
        }
    }

    /// <summary>After every event: no data lost, and the saga can always move on.</summary>
    private void CheckAfterEvent()
    {
        World.CheckNoLostData();
        if (_violation is not null) return;
        var s = State.Status;
        if (s.IsFinished || s is MigrationStatus.Suspended or MigrationStatus.Queued or MigrationStatus.New)
            return;
        if (_sent.Count == 0 && _retryTimer is null)
            Fail("stall", $"{MigrationDecider.Describe(s)} with no step in flight and no retry timer: nothing will ever move it " +
                $"(disks: {string.Join(", ", State.Disks.Select(d => $"{Short(d.Image)} {d.Phase} {d.Step} due {d.RetryDueAt?.Subtract(T0).TotalSeconds:0.###}"))})");
    }

    /// <summary>When nothing is left to happen: the migration ended, consistently with where each disk's data is.</summary>
    private void CheckEnd()
    {
        if (!State.Status.IsFinished)
        {
            Fail("stall", $"nothing left to happen but the migration is {MigrationDecider.Describe(State.Status)}");
            return;
        }
        World.CheckNoLostData();
        foreach (var disk in World.Disks.Values)
        {
            if (_violation is not null) return;
            var saga = State.Disk(disk.Image);
            var name = Short(disk.Image);
            if (disk.Open.FirstOrDefault(k => !disk.Volumes.ContainsKey(k)) is { Layer: not null } gone)
            {
                Fail("open-chain-missing", $"disk {name}: the drive's chain names {gone}, which does not exist");
                return;
            }
            if (disk.Open.FirstOrDefault(k => disk.Volumes[k].Content != disk.Written[k.Layer]) is { Layer: not null } stale)
            {
                Fail("stale-chain", $"disk {name}: {stale} holds version {disk.Volumes[stale].Content} of {stale.Layer}, the guest wrote {disk.Written[stale.Layer]}");
                return;
            }
            if (disk.MirrorRunning)
            {
                Fail("leftover-mirror", $"disk {name}: a mirror still runs after the migration ended ({MigrationDecider.Describe(State.Status)})");
                return;
            }
            if (State.Status is not MigrationStatus.Abandoned && disk.Pending is { } pending)
            {
                Fail("stale-switch-record", $"disk {name} ({saga.Phase}): the migration ended {MigrationDecider.Describe(State.Status)} but the host's record still shows a switch to {pending} begun: the VM is refused a start on an in-doubt chain");
                return;
            }
            if (disk.Pending is null && disk.RecordLeaf != disk.Open[^1])
            {
                Fail("record-disagrees", $"disk {name} ({saga.Phase}): the host's record names {disk.RecordLeaf}, the drive runs on {disk.Open[^1]} (DESIGN §7.1)");
                return;
            }
            if (State.Status is MigrationStatus.Abandoned)
            {
                // A drive whose switch is in doubt (record: begun, not recorded) is refused a start until an operator decides: not a silent harm.
                if (disk.Pending is null && disk.Open.FirstOrDefault(k => !disk.Volumes[k].Legal) is { Layer: not null } illegal)
                    Fail("abandoned-on-illegal-chain", $"disk {name} ({saga.Phase} at {saga.Step}): abandoned while the drive runs on ILLEGAL {illegal}; a restart refuses it");
                // Abandon removes the side the drive does not use, or names what it left (issue 9): nothing else may stay.
                else if (disk.Volumes.Keys.FirstOrDefault(k => !disk.Open.Contains(k)
                             && !(State.LeftBehind ?? ValueList<LeftBehind>.Empty).Any(l => l.Image == disk.Image
                                 && l.Domain == (k.Side == Side.Src ? saga.Plan.Source : saga.Plan.Destination))) is { Layer: not null } unnamed)
                    Fail("abandon-left-unnamed", $"disk {name} ({saga.Phase} at {saga.Step}): the abandon left {unnamed}, which the drive does not use, and did not name it");
                continue;
            }
            var moved = State.Status is MigrationStatus.Completed || saga.Phase == DiskPhase.Completed;
            var home = moved ? Side.Dst : Side.Src;
            if (disk.Open.Any(k => k.Side != home))
                Fail(moved ? "completed-not-on-destination" : "rolled-back-not-on-source",
                    $"disk {name} is {saga.Phase} in a {MigrationDecider.Describe(State.Status)} migration but the drive runs on {string.Join(",", disk.Open)}");
            else if (disk.Volumes.Keys.FirstOrDefault(k => k.Side != home) is { Layer: not null } left)
                Fail("leftover-volumes", $"disk {name} ({saga.Phase}): {left} is left on the other domain");
            else if (disk.Open.FirstOrDefault(k => !disk.Volumes[k].Legal) is { Layer: not null } illegal)
                Fail("illegal-chain", $"disk {name} ({saga.Phase}): the drive runs on ILLEGAL {illegal}");
        }
    }

    private void Fail(string invariant, string detail)
    {
        if (_violation is not null) return;
        _violation = new Violation(invariant, detail, _now);
        Log($"!!! {invariant}: {detail}");
    }

    // ---- plumbing ----------------------------------------------------------------------------------

    private void At(TimeSpan delay, Ev ev) => _queue.Enqueue(ev, ((_now + delay).Ticks, ++_seq));
    private TimeSpan Rand(double fromSeconds, double toSeconds) => TimeSpan.FromSeconds(fromSeconds + _rng.NextDouble() * (toSeconds - fromSeconds));
    private TimeSpan NetDelay() => Rand(0.001, 0.5);
    private string Pick(params string[] codes) => codes[_rng.Next(codes.Length)];

    private void Log(string line)
    {
        if (_tracing) _trace.Add($"{_now.TotalSeconds,9:0.000}s {line}");
    }

    private static string Short(ImageId image) => $"d{image.Value.ToString("N")[7]}";
    private static string Op(OperationId op) => $"{op.Step}:{Short(op.Image)}/{op.Attempt}";

    private static string Describe(HostAnswer answer) => answer switch
    {
        HostAnswer.Ok ok => $"ok ({ok.Outcome.Detail})",
        HostAnswer.Fail f => $"FAILED {f.Code}{(f.Transient ? " (transient)" : "")}: {f.Message}",
        _ => "pending",
    };

    private static string Describe(IMigrationCommand reply) => reply switch
    {
        ReportStepSucceeded ok => $"{Op(ok.Operation)} succeeded",
        ReportStepFailed f => $"{Op(f.Operation)} failed {f.Code}{(f.Transient ? " (transient)" : "")}",
        _ => reply.GetType().Name,
    };

    private static string DescribeEvent(IMigrationEvent e) => e switch
    {
        StepStarted s => $"StepStarted {Op(s.Operation)}",
        StepCompleted c => $"StepCompleted {Op(c.Operation)}",
        StepFailed f => $"StepFailed {Op(f.Operation)} {f.Code}",
        RetryScheduled r => $"RetryScheduled {r.Step}:{Short(r.Image)} attempt {r.NextAttempt} at +{r.Delay.TotalSeconds}s",
        PointOfNoReturnPassed p => $"PointOfNoReturnPassed {Short(p.Image)}",
        RollbackStarted rb => $"RollbackStarted {rb.Kind} {rb.Code}",
        DiskFinished f => $"DiskFinished {Short(f.Image)} {f.Outcome}",
        MigrationSuspended s => $"MigrationSuspended {s.Step}:{Short(s.Image)} ({s.Reason})",
        MigrationFailed f => $"MigrationFailed {f.Code}",
        MigrationCancelled => "MigrationCancelled",
        _ => e.GetType().Name,
    };

    /// <summary>What a host actor remembers about operation ids (OperationLedger): in memory, lost when the host restarts.</summary>
    private sealed class HostLedger
    {
        public Dictionary<OperationId, HostAnswer> Finished { get; } = new();
        public HashSet<OperationId> Waiting { get; } = [];
        public void Forget() { Finished.Clear(); Waiting.Clear(); }
    }

    private abstract record Ev;
    private sealed record DeliverCommandEv(SendStep Step, bool Late) : Ev;
    private sealed record DeliverReplyEv(IMigrationCommand Reply, bool Copy) : Ev;
    private sealed record DeadlineEv(OperationId Operation, int Incarnation, long Id) : Ev;
    private sealed record RetryTimerEv(int Incarnation, long Id) : Ev;
    private sealed record EarlyRetryTimerEv : Ev;
    private sealed record AdmitEv : Ev;
    private sealed record MirrorReadyEv(ImageId Image) : Ev;
    private sealed record MirrorFailEv(ImageId Image) : Ev;
    private sealed record PivotLandsEv(ImageId Image) : Ev;
    private sealed record GuestWriteEv(ImageId Image) : Ev;
    private sealed record KillVmEv : Ev;
    private sealed record CopyLandsEv(OperationId Operation) : Ev;
    private sealed record DeliverStopEv(OperationId Operation, bool Late) : Ev;
    private sealed record VmStoppedReportEv : Ev;
    private sealed record CrashEv : Ev;
    private sealed record HostRestartEv(HostRole Role, bool Scripted = false) : Ev;
    private sealed record ReplayLateEv(MigrationStep Step, ImageId Image) : Ev;
    private sealed record OperatorEv(IMigrationCommand Command) : Ev;
}
