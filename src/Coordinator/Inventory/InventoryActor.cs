using Akka.Actor;
using Akka.Cluster.Tools.PublishSubscribe;
using Akka.Event;
using Akka.Persistence;
using LiveMigration.Coordinator.Persistence;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Inventory;

/// <param name="PublishToCluster">Publish each journaled change of a host's VMs on <see cref="InventoryTopics.Reports"/> through DistributedPubSub; needs a cluster.</param>
/// <param name="SnapshotEvery">Save a snapshot after this many journaled events, so recovery replays at most that many.</param>
public sealed record InventoryOptions(bool PublishToCluster = true, int SnapshotEvery = 100);

/// <summary>
/// The persisted inventory around <see cref="InventoryState"/>: one per cluster (a singleton over role
/// <c>coordinator</c>). Hosts' reports arrive through its singleton proxy, in numbered parts; only changes are journaled.
/// Answers <see cref="GetValidationFacts"/>, <see cref="LocateVm"/>, <see cref="ReserveDisks"/>,
/// <see cref="ReleaseDisks"/> and <see cref="GetInventory"/>.
/// </summary>
public sealed class InventoryActor : ReceivePersistentActor
{
    public const string InventoryPersistenceId = "inventory";

    private readonly InventoryOptions _options;
    private readonly TimeProvider _clock;
    private readonly ILoggingAdapter _log = Context.GetLogger();
    /// <summary>What the inventory decides on: every fact it decided, journaled or still on its way to the journal.</summary>
    private InventoryState _state = InventoryState.Empty;
    /// <summary>The journaled facts only: what a snapshot may hold (a fact whose write failed must never enter one).</summary>
    private InventoryState _durable = InventoryState.Empty;
    // the sequence number of the newest snapshot
    private long _snapshotAt;
    private readonly AnswersAfterWrites _answers = new();

    public static Props Props(InventoryOptions options, TimeProvider? clock = null) =>
        Akka.Actor.Props.Create(() => new InventoryActor(options, clock ?? TimeProvider.System));

    public InventoryActor(InventoryOptions options, TimeProvider clock)
    {
        if (options.SnapshotEvery < 1)
            throw new ArgumentOutOfRangeException(nameof(options), $"snapshots every {options.SnapshotEvery} events: must be at least 1");
        _options = options;
        _clock = clock;

        Recover<SnapshotOffer>(offer =>
        {
            if (offer.Snapshot is InventorySnapshot snapshot) _state = _durable = InventoryState.FromSnapshot(snapshot);
            _snapshotAt = offer.Metadata.SequenceNr;
        });
        Recover<IInventoryEvent>(e => _state = _durable = _durable.Apply(e));
        Recover<RecoveryCompleted>(_ => _log.Info(
            "Inventory recovered at sequence number {SequenceNr}: {Hosts} hosts, {Domains} domains, {Reservations} reserved disks",
            LastSequenceNr, _state.Hosts.Count, _state.Domains.Count, _state.Reservations.Count));

        Command<HostStatusReport>(report =>
        {
            var decision = InventoryDecider.Decide(_state, report);
            if (decision.Receipt is { Resync: true })
                _log.Info("Inventory: host {Host} sent part {Seq} of a report chain it does not know (epoch {Epoch}); asking for its whole view",
                    report.HostId, report.Seq, report.Epoch);
            if (decision.Chain is { } chain)
            {
                _state = _state.Chained(report.HostId, chain, report.At);
                _durable = _durable.Chained(report.HostId, chain, report.At);
            }
            var receipt = decision.Receipt is { } answer ? ReceiptFor(answer) : () => { };
            if (decision.Event is { } figures && InventoryDecider.FiguresOnly(_state, figures))
            {
                // a whole view still reaches the Coordinators' directories (one that started since learns the host's VMs)
                var after = figures is HostReported ? () => { PublishChange(figures); receipt(); } : receipt;
                if (FiguresDue("vms:" + report.HostId)) JournalFigures(report.HostId, figures, after);
                else ApplyFigures(figures, after);
            }
            else if (decision.Event is { } change)
            {
                // a journaled report holds its figures too
                _figuresJournaledAt["vms:" + report.HostId] = _clock.GetUtcNow();
                // Coordinators keep a directory of which host runs which VM: tell them what changed.
                PersistAndApply(change, () =>
                {
                    PublishChange(change);
                    receipt();
                });
            }
            else
                AfterWhatIsPending(receipt);
        });
        Command<DomainStatusReport>(report =>
        {
            var receipt = ReceiptFor(new ReportAcknowledged(ReportAcknowledged.DomainsReport, report.At));
            if (InventoryDecider.Decide(_state, report) is not { } change) AfterWhatIsPending(receipt);
            else if (InventoryDecider.FiguresOnly(_state, change) && !FiguresDue("domains:" + report.HostId)) ApplyFigures(change, receipt);
            else
            {
                _figuresJournaledAt["domains:" + report.HostId] = _clock.GetUtcNow();
                PersistAndApply(change, receipt);
            }
        });
        Command<ReserveDisks>(reserve => Answer(InventoryDecider.Decide(_state, reserve, _clock.GetUtcNow())));
        Command<ReleaseDisks>(release => Answer(InventoryDecider.Decide(_state, release, _clock.GetUtcNow())));
        // the Coordinators' directories of which host runs which VM drop a forgotten host too
        Command<ForgetHost>(forget => Answer(InventoryDecider.Decide(_state, forget, _clock.GetUtcNow()), publish: true));
        Command<GetValidationFacts>(ask => Reply(new ValidationFactsReply(_state.FactsFor(ask.Vm, ask.Images, _clock.GetUtcNow()))));
        Command<LocateVm>(ask => Reply(new VmLocation(ask.Vm, _state.Locate(ask.Vm))));
        Command<GetInventory>(_ => Reply(_state.Snapshot()));

        Command<SaveSnapshotSuccess>(saved =>
            // the newest snapshot is enough to recover; older ones only take space
            DeleteSnapshots(new SnapshotSelectionCriteria(saved.Metadata.SequenceNr - 1)));
        Command<SaveSnapshotFailure>(failed => _log.Warning(failed.Cause,
            "Inventory snapshot at sequence number {SequenceNr} failed; recovery replays the journal from the snapshot before",
            failed.Metadata.SequenceNr));
        Command<DeleteSnapshotsSuccess>(_ => { });
        Command<DeleteSnapshotsFailure>(failed => _log.Warning(failed.Cause, "Deleting old inventory snapshots failed; they stay"));
    }

    public override string PersistenceId => InventoryPersistenceId;

    private void Reply(object answer)
    {
        var replyTo = Sender;
        AfterWhatIsPending(() => replyTo.Tell(answer));
    }

    /// <param name="publish">Whether the fact also goes to the Coordinators' listeners (<see cref="PublishChange"/>) once journaled.</param>
    private void Answer(InventoryDecision decision, bool publish = false)
    {
        var replyTo = Sender;
        if (decision.Event is not { } change) AfterWhatIsPending(() => replyTo.Tell(decision.Reply));
        else
            PersistAndApply(change, () =>
            {
                if (publish) PublishChange(change);
                replyTo.Tell(decision.Reply);
            });
    }

    /// <summary>
    /// The receipt a reporter waits for, sent once the report's fact is journaled (or found to be nothing new): reporters
    /// re-send until they get it, so a report lost on the way (the singleton moving, a proxy's buffer) is sent again.
    /// </summary>
    private Action ReceiptFor(ReportAcknowledged receipt)
    {
        var reporter = Sender;
        return () =>
        {
            if (!reporter.IsNobody() && !reporter.Equals(Self)) reporter.Tell(receipt);
        };
    }

    private void PublishChange(IInventoryEvent change)
    {
        if (_options.PublishToCluster)
            DistributedPubSub.Get(Context.System).Mediator.Tell(new Publish(InventoryTopics.Reports, change));
    }

    /// <summary>
    /// The fact counts for the next command at once and is answered once journaled. Written with PersistAsync, so the
    /// journal takes the facts of many commands in one batch: with Persist the singleton stashed everything during each
    /// write and answered one reservation per journal round trip, which capped every start of the cluster (issue 11).
    /// </summary>
    private void PersistAndApply(IInventoryEvent change, Action? afterwards = null)
    {
        _state = _state.Apply(change);
        _answers.Issued();
        PersistAsync(change, persisted =>
        {
            _durable = _durable.Apply(persisted);
            afterwards?.Invoke();
            if (LastSequenceNr - _snapshotAt >= SnapshotInterval())
            {
                SaveSnapshot(_durable.Snapshot());
                _snapshotAt = LastSequenceNr;
            }
            _answers.Done();
        });
    }

    /// <summary>
    /// A fact that only moves figures (<see cref="InventoryDecider.FiguresOnly"/>): it counts at once and is not journaled;
    /// it stays out of <see cref="_durable"/> (a snapshot holds journaled facts only, its figures those last journaled).
    /// The receipt still waits for the writes before it, as every answer does.
    /// </summary>
    private void ApplyFigures(IInventoryEvent figures, Action receipt)
    {
        _state = _state.Apply(figures);
        AfterWhatIsPending(receipt);
    }

    /// <summary>
    /// A host's figures due to be journaled: the report counts at once, and what the journal holds of the host's VMs is
    /// brought up to what the inventory holds (every VM whose figures moved since they were last journaled, not only this
    /// report's), so a recovery starts from figures at most <see cref="FiguresJournaledEvery"/> old.
    /// </summary>
    private void JournalFigures(string hostId, IInventoryEvent figures, Action after)
    {
        _state = _state.Apply(figures);
        var host = _state.Hosts[hostId];
        var journaled = _durable.Hosts.TryGetValue(hostId, out var durable) ? durable.Vms.ToDictionary(v => v.Id) : [];
        var behind = host.Vms.Where(v => !journaled.TryGetValue(v.Id, out var was) || !was.Equals(v)).ToValueList();
        PersistAndApply(new HostVmsChanged(hostId, host.Address, host.SpmCapable, behind, ValueList<VmId>.Empty, host.LastReport), after);
    }

    /// <summary>
    /// How often a reporter's figures are journaled anyway: an inventory that recovers (or moves) starts from journaled
    /// figures at most about this old, until the hosts report again; one write a minute per reporter instead of one a report.
    /// </summary>
    public static readonly TimeSpan FiguresJournaledEvery = TimeSpan.FromMinutes(1);

    private readonly Dictionary<string, DateTimeOffset> _figuresJournaledAt = [];

    /// <summary>Whether this reporter's figures are due to be journaled (and counts them as journaled now if so).</summary>
    private bool FiguresDue(string reporter)
    {
        var now = _clock.GetUtcNow();
        if (_figuresJournaledAt.TryGetValue(reporter, out var last) && now - last < FiguresJournaledEvery) return false;
        _figuresJournaledAt[reporter] = now;
        return true;
    }

    /// <summary>
    /// At least <see cref="InventoryOptions.SnapshotEvery"/> events between snapshots, and a quarter as many as the snapshot
    /// has entries (VMs and reserved disks) for a large pool: a snapshot writes all of them, and with 10,000 VMs one every
    /// 100 events rewrote megabytes several times a second. So a snapshot costs about what the events it saves from replay
    /// cost, and a recovery replays at most that many small events.
    /// </summary>
    private long SnapshotInterval() =>
        Math.Max(_options.SnapshotEvery, (_durable.Hosts.Values.Sum(h => (long)h.Vms.Count) + _durable.Reservations.Count) / 4);

    /// <summary>An answer that needs no write still waits for the writes before it: nobody hears of a fact before it is journaled.</summary>
    private void AfterWhatIsPending(Action answer) => _answers.Answer(answer);

    /// <summary>A fact the journal refused is in <see cref="_state"/> but not in the journal: start again from the journal.</summary>
    protected override void OnPersistRejected(Exception cause, object @event, long sequenceNr)
    {
        base.OnPersistRejected(cause, @event, sequenceNr);
        throw new InvalidOperationException($"the journal refused inventory fact {sequenceNr} ({@event.GetType().Name}); recovering from the journal", cause);
    }
}
