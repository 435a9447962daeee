using Akka.Actor;
using Akka.Event;
using Akka.Pattern;
using Akka.Persistence;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Audit;

/// <param name="KeepInMemory">How many of the newest entries the API can page through; older ones stay in the journal.</param>
public sealed record AuditOptions(int KeepInMemory = 10_000);

/// <summary>
/// The persisted audit trail around <see cref="AuditState"/>: one per cluster (a singleton over role <c>coordinator</c>).
/// Answers <see cref="RecordAuditRequest"/> and <see cref="RecordAuditOutcome"/> with <see cref="AuditRecorded"/> once
/// the event is journaled, and <see cref="GetAuditEntries"/> with a page.
/// </summary>
public sealed class AuditActor : ReceivePersistentActor
{
    public const string AuditPersistenceId = "audit";

    private readonly ILoggingAdapter _log = Context.GetLogger();
    private AuditState _state;

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
        _state = AuditState.Empty(options.KeepInMemory);

        Recover<IAuditEvent>(e => _state = _state.Apply(e));
        Recover<RecoveryCompleted>(_ => _log.Info("Audit trail recovered at sequence number {SequenceNr}: {Requests} requests recorded",
            LastSequenceNr, _state.LastNumber));

        Command<RecordAuditRequest>(request => Record(_state.Decide(request), request.RequestId));
        Command<RecordAuditOutcome>(outcome => Record(_state.Decide(outcome), outcome.RequestId));
        Command<GetAuditEntries>(query => Sender.Tell(_state.Page(query)));
    }

    public override string PersistenceId => AuditPersistenceId;

    private void Record(IAuditEvent? change, string requestId)
    {
        var replyTo = Sender;
        if (change is null)
        {
            replyTo.Tell(new AuditRecorded(requestId));
            return;
        }
        Persist(change, persisted =>
        {
            _state = _state.Apply(persisted);
            replyTo.Tell(new AuditRecorded(requestId));
        });
    }
}
