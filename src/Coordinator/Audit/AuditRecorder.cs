using Akka.Actor;
using Akka.Hosting;
using LiveMigration.Coordinator.Api;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Audit;

/// <summary>Registry key of the audit trail singleton's proxy.</summary>
public sealed class AuditProxy;

/// <summary>The API's way to the audit trail singleton: each record is asked for, and the answer comes once it is journaled.</summary>
public sealed class AuditRecorder(IRequiredActor<AuditProxy> trail) : IApiAuditTrail
{
    /// <summary>Long enough for the singleton to move to another Coordinator; a change waits at most this long to be recorded.</summary>
    public static readonly TimeSpan RecordTimeout = TimeSpan.FromSeconds(10);

    public Task RecordRequestAsync(RecordAuditRequest request, CancellationToken ct) =>
        trail.ActorRef.Ask<AuditRecorded>(request, RecordTimeout, ct);

    public Task RecordOutcomeAsync(RecordAuditOutcome outcome, CancellationToken ct) =>
        trail.ActorRef.Ask<AuditRecorded>(outcome, RecordTimeout, ct);

    public async Task<AuditEntries> PageAsync(GetAuditEntries query, CancellationToken ct) =>
        await trail.ActorRef.Ask<AuditEntries>(query, RecordTimeout, ct);
}
