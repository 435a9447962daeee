using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Api;

/// <summary>Where the API records the requests that change something (see <see cref="ApiSecurity"/>); each call returns once the record is durable.</summary>
public interface IApiAuditTrail
{
    Task RecordRequestAsync(RecordAuditRequest request, CancellationToken ct);

    Task RecordOutcomeAsync(RecordAuditOutcome outcome, CancellationToken ct);
}
