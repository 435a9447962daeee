using Akka.Cluster.Sharding;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Migration;

/// <summary>
/// Routes to the migration entity: commands carry their <see cref="IMigrationCommand.MigrationId"/>, host
/// replies the migration of their <see cref="OperationId"/>, queries their <see cref="IMigrationQuery.MigrationId"/>; a <c>ShardingEnvelope</c> is unwrapped by the base class. The entity id is the migration id's text.
/// </summary>
public sealed class MigrationMessageExtractor(int shardCount) : HashCodeMessageExtractor(shardCount)
{
    public override string? EntityId(object message) => message switch
    {
        IMigrationCommand command => command.MigrationId.ToString(),
        IHostReply reply => reply.Operation.Migration.ToString(),
        IMigrationQuery query => query.MigrationId.ToString(),
        _ => null,
    };
}
