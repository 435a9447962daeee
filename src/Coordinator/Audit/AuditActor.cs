using Akka.Actor;
using Akka.Event;
using Akka.Pattern;
using Akka.Persistence;
using LiveMigration.Coordinator.Persistence;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Audit;

/// <param name="KeepInMemory">How many of the newest entries the API can page through; older ones stay in the journal.</param>
/// <param name="SnapshotEvery">Save a snapshot after this many journaled events, so a new singleton replays at most that many.</param>
public sealed record AuditOptions(int KeepInMemory = 10_000, int SnapshotEvery = 1000);

/// <summary>
/// The persisted audit trail around <see cref="AuditState"/>: one per cluster (a singleton over role <c>coordinator</c>).
/// Answers <see cref="RecordAuditRequest"/> and <see cref="RecordAuditOutcome"/> with <see cref="AuditRecorded"/> once
/// the event is journaled, and <see cref="GetAuditEntries"/> with a page.
/// </summary>
public sealed class AuditActor : ReceivePersistentActor
{
    public const string AuditPersistenceId = "audit";

    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly AuditOptions _options;
    /// <summary>What the trail numbers requests by: every entry decided, journaled or still on its way.</summary>
    private AuditState _state;
    /// <summary>The journaled entries only: what a snapshot may hold.</summary>
    private AuditState _durable;
    private readonly AnswersAfterWrites _answers = new();

    /// <summary>
    /// Under a back-off supervisor: a journal write that fails stops a persistent actor, and a singleton that stopped
    /// would stay gone, refusing every change of the API (no audit, no change) until the Coordinator restarts.
    /// </summary>
    public static Props SupervisedProps(AuditOptions options) =>
        BackoffSupervisor.Props(Backoff.OnStop(Props(options), "audit-trail", TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(10), 0.2, maxNrOfRetries: -1));

    public static Props Props(AuditOptions options) => Akka.Actor.Props.Create(() => new AuditActor(options));

    public AuditActor(AuditOptions options)
    {
        if (options.KeepInMemory < 1)
            throw new ArgumentOutOfRangeException(nameof(options), $"keeping {options.KeepInMemory} entries: must be at least 1");
        if (options.SnapshotEvery < 1)
            throw new ArgumentOutOfRangeException(nameof(options), $"snapshots every {options.SnapshotEvery} events: must be at least 1");
        _options = options;
        _state = _durable = AuditState.Empty(options.KeepInMemory);

        Recover<SnapshotOffer>(offer =>
        {
            if (offer.Snapshot is AuditSnapshot snapshot) _state = _durable = AuditState.FromSnapshot(snapshot, options.KeepInMemory);
        });
        Recover<IAuditEvent>(e => _state = _durable = _durable.Apply(e));
        Recover<RecoveryCompleted>(_ => _log.Info("Audit trail recovered at sequence number {SequenceNr}: {Requests} requests recorded",
            LastSequenceNr, _state.LastNumber));

        Command<RecordAuditRequest>(request => Record(_state.Decide(request), request.RequestId));
        Command<RecordAuditOutcome>(outcome => Record(_state.Decide(outcome), outcome.RequestId));
        Command<GetAuditEntries>(query => Sender.Tell(_durable.Page(query)));
        Command<SaveSnapshotSuccess>(saved =>
            // the newest snapshot is enough to recover; older ones only take space
            DeleteSnapshots(new SnapshotSelectionCriteria(saved.Metadata.SequenceNr - 1)));
        Command<SaveSnapshotFailure>(failed => _log.Warning(failed.Cause,
            "Audit trail snapshot at sequence number {SequenceNr} failed; recovery replays the journal from the snapshot before", failed.Metadata.SequenceNr));
        Command<DeleteSnapshotsSuccess>(_ => { });
        Command<DeleteSnapshotsFailure>(failed => _log.Warning(failed.Cause, "Deleting old audit trail snapshots failed; they stay"));
    }

    public override string PersistenceId => AuditPersistenceId;

    private void Record(IAuditEvent? change, string requestId)
    {
        var replyTo = Sender;
        if (change is null)
        {
            // answered after the writes before it, so "recorded" never overtakes an entry still on its way
            _answers.Answer(() => replyTo.Tell(new AuditRecorded(requestId)));
            return;
        }
        // Numbered at once, answered once journaled: PersistAsync lets the journal write the entries of many requests in one
        // batch; with Persist the trail stashed everything during each write, one request per journal round trip (issue 11).
        _state = _state.Apply(change);
        _answers.Issued();
        PersistAsync(change, persisted =>
        {
            _durable = _durable.Apply(persisted);
            replyTo.Tell(new AuditRecorded(requestId));
            if (LastSequenceNr % _options.SnapshotEvery == 0) SaveSnapshot(_durable.Snapshot());
            _answers.Done();
        });
    }

    /// <summary>An entry the journal refused is numbered in <see cref="_state"/> but not journaled: start again from the journal.</summary>
    protected override void OnPersistRejected(Exception cause, object @event, long sequenceNr)
    {
        base.OnPersistRejected(cause, @event, sequenceNr);
        throw new InvalidOperationException($"the journal refused audit entry {sequenceNr} ({@event.GetType().Name}); recovering from the journal", cause);
    }
}
