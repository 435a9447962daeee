using Akka.Configuration;
using Akka.Hosting;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Shared.Serialization;

/// <summary>Binds <see cref="ProtocolSerializer"/> to the protocol's marker interfaces, by HOCON or by Akka.Hosting.</summary>
public static class ProtocolSerialization
{
    public const string SerializerName = "lm-protocol";

    /// <summary>Every message of these kinds goes through the protocol serializer, on the wire and in the journal.</summary>
    public static IReadOnlyList<Type> BoundTypes { get; } =
        [
            typeof(IHostCommand), typeof(IHostReply), typeof(IMigrationCommand), typeof(IMigrationEvent),
            typeof(IMigrationQuery), typeof(IMigrationReply), typeof(IAdmissionMessage),
            typeof(IInventoryMessage), typeof(IInventoryEvent),
            typeof(IManagementMessage),
            typeof(IAuditMessage), typeof(IAuditEvent),
            typeof(IMembershipMessage),
        ];

    /// <summary>The binding as configuration, for an ActorSystem built without Akka.Hosting (tests, tools).</summary>
    public static Config Hocon { get; } = ConfigurationFactory.ParseString(BuildHocon());

    /// <summary>The binding through Akka.Hosting, for the executables and the tests that host them.</summary>
    public static AkkaConfigurationBuilder WithProtocolSerializer(this AkkaConfigurationBuilder builder) =>
        builder.WithCustomSerializer(SerializerName, BoundTypes, system => new ProtocolSerializer(system));

    private static string BuildHocon()
    {
        var bindings = string.Join("\n", BoundTypes.Select(t => $"      \"{QualifiedName(t)}\" = {SerializerName}"));
        return $$"""
            akka.actor {
              serializers {
                {{SerializerName}} = "{{QualifiedName(typeof(ProtocolSerializer))}}"
              }
              serialization-bindings {
            {{bindings}}
              }
            }
            """;
    }

    private static string QualifiedName(Type type) => $"{type.FullName}, {type.Assembly.GetName().Name}";
}
