using Akka.Actor;
using Akka.Cluster.Tools.PublishSubscribe;
using Akka.Event;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Coordinator.Migration;

/// <summary>How many migrations may run at once per host (of the VM) and per storage domain (source or destination); 0 = no limit.</summary>
public sealed record MigrationLimits(int PerHost, int PerDomain)
{
    public static readonly MigrationLimits Default = new(PerHost: 2, PerDomain: 4);
}

/// <summary>The migrations the journal has admitted and not finished, as claims (host null when not known here).</summary>
public delegate Task<IReadOnlyList<AdmissionHeld>> RunningMigrations();

/// <summary>
/// The concurrency limits of issue 3: admits a migration at once unless its host or one of its domains
/// is at its limit; then it waits, in arrival order, until a running migration releases its slots.
/// Its state is only memory: when it starts it says so to every Coordinator (<see cref="AdmissionRestarted"/>), whose
/// running migrations announce themselves again (<see cref="AdmissionHeld"/>; recovered ones do so anyway) and queued
/// ones ask again, and it counts the migrations the journal has running (<see cref="RunningMigrations"/>: those of a
/// Coordinator that died with it recover only once their shards move, tens of seconds later, while their copies go on);
/// until both a settle time has passed and that count is in, it admits nothing, so the slots held are counted before any
/// is given (a singleton that moved to another Coordinator admitted at once, over the limits of those still running).
/// A release is a message that can be lost (its Coordinator died before the singleton's proxy passed it on): while a migration waits, the holders of the slots are asked
/// (<see cref="AdmissionCheck"/>, through the shard region, which wakes a passivated saga) whether they still hold them,
/// so a slot of a finished migration never keeps a queue waiting for good.
/// </summary>
public sealed class MigrationAdmission : ReceiveActor, IWithTimers
{
    private sealed record Claim(MigrationId Migration, string? Host, ValueList<DomainId> Domains);
    private sealed record Waiting(Claim Claim, IActorRef ReplyTo);
    private sealed record ReconcileDue
    {
        public static readonly ReconcileDue Instance = new();
    }
    private sealed record SettleDue
    {
        public static readonly SettleDue Instance = new();
    }
    private sealed record Counted(IReadOnlyList<AdmissionHeld>? Running, Exception? Failure = null);
    private sealed record CountOverdue
    {
        public static readonly CountOverdue Instance = new();
    }

    /// <summary>How long the count of the journal's running migrations may take before the limits go on without it (a late count is still taken).</summary>
    public static readonly TimeSpan RunningCountTimeout = TimeSpan.FromSeconds(20);

    /// <summary>
    /// How long a started singleton admits nothing: its announcement goes out by pub/sub, and the answers come through the
    /// singleton proxies of the other Coordinators, which find the new singleton within about a second.
    /// </summary>
    public static readonly TimeSpan DefaultSettleTime = TimeSpan.FromSeconds(3);

    /// <summary>How often the holders are asked while something waits: a lost release costs a queue at most about this long.</summary>
    public static readonly TimeSpan DefaultReconcileInterval = TimeSpan.FromSeconds(15);

    private readonly MigrationLimits _limits;
    private readonly Func<IActorRef?> _sagas;
    private readonly TimeSpan _reconcileInterval;
    private readonly IActorRef? _announceTo;
    private readonly TimeSpan _settleTime;
    private readonly RunningMigrations? _journaled;
    private bool _settleTimeOver = true;
    private bool _counted = true;
    /// <summary>Whether the count came (<see cref="_counted"/> is also set when it is overdue).</summary>
    private bool _countIn = true;
    /// <summary>Released while the journal was counted: the count, read before, must not take them back.</summary>
    private readonly HashSet<MigrationId> _releasedBeforeCount = [];
    private bool Settling => !_settleTimeOver || !_counted;
    private readonly Dictionary<MigrationId, Claim> _running = [];
    // What each host and domain runs now, so a claim is judged without counting every running migration.
    private readonly Dictionary<string, int> _perHost = [];
    private readonly Dictionary<DomainId, int> _perDomain = [];
    private readonly List<Waiting> _queue = [];
    /// <summary>Holders asked in the current round: a release that answers one is logged as found by the check.</summary>
    private readonly HashSet<MigrationId> _checked = [];
    private readonly ILoggingAdapter _log = Context.GetLogger();

    public ITimerScheduler Timers { get; set; } = null!;

    /// <param name="sagas">The migration shard region, once there is one (the singleton may start before it).</param>
    /// <param name="reconcileInterval">How often holders are asked while something waits (<see cref="DefaultReconcileInterval"/>).</param>
    /// <param name="announceTo">The pub/sub mediator its start is published through (<see cref="AdmissionRestarted"/>); null: none.</param>
    /// <param name="settleTime">How long it admits nothing after its start (<see cref="DefaultSettleTime"/> as a singleton); null: no wait.</param>
    /// <param name="journaled">The migrations the journal has running, counted at start before anything is admitted; null: none.</param>
    public static Props Props(MigrationLimits limits, Func<IActorRef?>? sagas = null, TimeSpan? reconcileInterval = null,
        IActorRef? announceTo = null, TimeSpan? settleTime = null, RunningMigrations? journaled = null) =>
        Akka.Actor.Props.Create(() => new MigrationAdmission(limits, sagas, reconcileInterval, announceTo, settleTime, journaled));

    public MigrationAdmission(MigrationLimits limits, Func<IActorRef?>? sagas, TimeSpan? reconcileInterval, IActorRef? announceTo = null,
        TimeSpan? settleTime = null, RunningMigrations? journaled = null)
    {
        _announceTo = announceTo;
        _settleTime = settleTime ?? TimeSpan.Zero;
        _journaled = journaled;
        _limits = limits;
        _sagas = sagas ?? (() => null);
        Receive<AdmissionRequest>(r => Request(new Claim(r.Migration, r.Host, r.Domains), Sender));
        Receive<AdmissionHeld>(h =>
        {
            _checked.Remove(h.Migration);
            _queue.RemoveAll(w => w.Claim.Migration == h.Migration);
            var known = _running.GetValueOrDefault(h.Migration);
            // a saga that cannot name its VM's host right now (no report of the VM yet) still runs there
            var claim = new Claim(h.Migration, h.Host ?? known?.Host, h.Domains);
            Add(claim);
            if (known is not null && (known.Host != claim.Host || !known.Domains.SequenceEqual(claim.Domains))) AdmitWaiting();
        });
        Receive<AdmissionReleased>(r =>
        {
            if (_checked.Remove(r.Migration) && _running.ContainsKey(r.Migration))
                _log.Info("Migration {Migration} has finished: its admission slots are free", r.Migration);
            _queue.RemoveAll(w => w.Claim.Migration == r.Migration);
            if (_journaled is not null && !_countIn) _releasedBeforeCount.Add(r.Migration);
            if (Remove(r.Migration))
                AdmitWaiting();
        });
        Receive<ReconcileDue>(_ => Reconcile());
        Receive<SettleDue>(_ =>
        {
            _settleTimeOver = true;
            Settled();
        });
        Receive<CountOverdue>(_ =>
        {
            if (_counted) return;
            _log.Warning("Admission limits: the journal's running migrations are not counted after {Timeout}; going on with those that said so (the count is taken when it comes)",
                RunningCountTimeout);
            _counted = true;
            Settled();
        });
        Receive<Counted>(counted =>
        {
            _countIn = true;
            if (counted.Running is { } running)
            {
                // a claim said since is newer, and one released since has finished
                var added = 0;
                foreach (var held in running.Where(held => !_running.ContainsKey(held.Migration) && !_releasedBeforeCount.Contains(held.Migration)))
                {
                    _queue.RemoveAll(w => w.Claim.Migration == held.Migration); // admitted by the singleton before: not waiting
                    Add(new Claim(held.Migration, held.Host, held.Domains));
                    added++;
                }
                _log.Info("Admission limits: the journal has {Running} migration(s) running, {Added} of them not heard from yet", running.Count, added);
            }
            else
                _log.Warning(counted.Failure, "Admission limits: the journal's running migrations could not be counted; going on with those that said so");
            _releasedBeforeCount.Clear();
            _counted = true;
            Settled();
        });
        _reconcileInterval = reconcileInterval ?? DefaultReconcileInterval;
    }

    protected override void PreStart()
    {
        Timers.StartPeriodicTimer(ReconcileDue.Instance, ReconcileDue.Instance, _reconcileInterval);
        _announceTo?.Tell(new Publish(AdmissionRestarted.Topic, new AdmissionRestarted(DateTimeOffset.UtcNow)));
        // without limits nothing is ever refused, so nothing needs counting first
        if (_limits.PerHost <= 0 && _limits.PerDomain <= 0) return;
        if (_settleTime > TimeSpan.Zero)
        {
            _settleTimeOver = false;
            Timers.StartSingleTimer(SettleDue.Instance, SettleDue.Instance, _settleTime);
        }
        if (_journaled is { } journaled)
        {
            _counted = false;
            _countIn = false;
            // off this actor's thread: the count reads the migrations list's table, and a delegate that throws must not stop the limits
            Task.Run(() => journaled()).PipeTo(Self, success: running => new Counted(running), failure: e => new Counted(null, e));
            Timers.StartSingleTimer(CountOverdue.Instance, CountOverdue.Instance, RunningCountTimeout);
        }
    }

    /// <summary>
    /// The migrations the journal has admitted and not finished, from the migrations list's projection, each claiming its
    /// domains and its VM's host, as their sagas claim (<see cref="DomainsOf"/>). <paramref name="locate"/> names the host
    /// (the inventory asked when this node's directory does not know it); one that does not answer leaves it unnamed.
    /// </summary>
    public static RunningMigrations Journaled(MigrationCatalog catalog, Func<VmId, Task<string?>> locate) => async () =>
    {
        var admitted = (await catalog.UnfinishedAsync())
            .Where(state => state.Status is not (MigrationStatus.New or MigrationStatus.Queued) && !state.Status.IsFinished && state.Request is not null)
            .ToList();
        // all at once: an inventory that does not answer costs one timeout, not one per VM
        var located = await Task.WhenAll(admitted.Select(state => state.Request!.Vm).Distinct().Select(async vm =>
        {
            try
            {
                return (Vm: vm, Host: await locate(vm));
            }
            catch (Exception e) when (e is AskTimeoutException or TimeoutException or TaskCanceledException)
            {
                return (Vm: vm, Host: (string?)null); // its domains still count; its saga names the host when it recovers
            }
        }));
        var hosts = located.ToDictionary(l => l.Vm, l => l.Host);
        return admitted.Select(state => new AdmissionHeld(state.Id, hosts[state.Request!.Vm], DomainsOf(state))).ToList();
    };

    /// <summary>The domains a migration's slots are taken on: every source and destination of its disks.</summary>
    public static ValueList<DomainId> DomainsOf(MigrationState state) =>
        state.Disks.SelectMany(d => new[] { d.Plan.Source, d.Plan.Destination }).Distinct().ToValueList();

    /// <summary>Once the settle time has passed and the journal's running migrations are counted, what waits is judged.</summary>
    private void Settled()
    {
        if (Settling) return;
        if (_queue.Count > 0)
            _log.Info("Admission limits settled with {Running} migration(s) counted as running; {Waiting} waiting are judged now", _running.Count, _queue.Count);
        AdmitWaiting();
    }

    private void Request(Claim claim, IActorRef replyTo)
    {
        if (_running.ContainsKey(claim.Migration))
        {
            replyTo.Tell(new AdmitMigration(claim.Migration)); // the first answer was lost: same answer
            return;
        }
        var index = _queue.FindIndex(w => w.Claim.Migration == claim.Migration);
        if (index >= 0)
        {
            _queue[index] = new Waiting(claim, replyTo); // the saga may have moved (recovery elsewhere)
            return;
        }
        if (!Settling && Fits(claim))
            Admit(claim, replyTo);
        else
        {
            _queue.Add(new Waiting(claim, replyTo));
            // while settling it is judged when the count is whole
            if (!Settling) _log.Info("Migration {Migration} waits as Queued: host {Host} or one of domains {Domains} is at its limit ({PerHost} per host, {PerDomain} per domain)",
                claim.Migration, claim.Host ?? "(unknown)", string.Join(",", claim.Domains), _limits.PerHost, _limits.PerDomain);
        }
    }

    /// <summary>While something waits, asks each holder of a slot it waits for whether it still runs; the answers are the usual messages.</summary>
    private void Reconcile()
    {
        _checked.Clear();
        if (_queue.Count == 0 || _sagas() is not { } sagas) return;
        var hosts = _queue.Select(w => w.Claim.Host).OfType<string>().ToHashSet();
        var domains = _queue.SelectMany(w => w.Claim.Domains).ToHashSet();
        foreach (var claim in _running.Values.Where(c => c.Host is { } h && hosts.Contains(h) || c.Domains.Any(domains.Contains)))
        {
            _checked.Add(claim.Migration);
            sagas.Tell(new AdmissionCheck(claim.Migration), Self);
        }
    }

    private void AdmitWaiting()
    {
        if (Settling) return;
        foreach (var waiting in _queue.ToList())
            if (Fits(waiting.Claim))
            {
                _queue.Remove(waiting);
                Admit(waiting.Claim, waiting.ReplyTo);
            }
    }

    private void Admit(Claim claim, IActorRef replyTo)
    {
        Add(claim);
        replyTo.Tell(new AdmitMigration(claim.Migration));
    }

    private void Add(Claim claim)
    {
        Remove(claim.Migration);
        _running[claim.Migration] = claim;
        if (claim.Host is { } host) _perHost[host] = _perHost.GetValueOrDefault(host) + 1;
        foreach (var domain in claim.Domains) _perDomain[domain] = _perDomain.GetValueOrDefault(domain) + 1;
    }

    private bool Remove(MigrationId migration)
    {
        if (!_running.Remove(migration, out var claim)) return false;
        if (claim.Host is { } host && --_perHost[host] == 0) _perHost.Remove(host);
        foreach (var domain in claim.Domains)
            if (--_perDomain[domain] == 0) _perDomain.Remove(domain);
        return true;
    }

    private bool Fits(Claim claim)
    {
        if (_limits.PerHost > 0 && claim.Host is { } host && _perHost.GetValueOrDefault(host) >= _limits.PerHost)
            return false;
        if (_limits.PerDomain > 0)
            foreach (var domain in claim.Domains)
                if (_perDomain.GetValueOrDefault(domain) >= _limits.PerDomain)
                    return false;
        return true;
    }
}
