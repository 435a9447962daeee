using Akka.Actor;
using Akka.Configuration;
using Akka.Hosting;
using Akka.TestKit.Xunit2;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Protocol;
using LiveMigration.Shared.Serialization;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace LiveMigration.Shared.Tests.Serialization;

/// <summary>With serialize-messages on, every local send goes through the bound serializer, as it would across the cluster.</summary>
public sealed class ProtocolBindingTests()
    : TestKit(ConfigurationFactory.ParseString("akka.actor.serialize-messages = on").WithFallback(ProtocolSerialization.Hocon))
{
    private sealed class Echo : ReceiveActor
    {
        public Echo() => ReceiveAny(message => Sender.Tell(message));
    }

    public static TheoryData<string> OneSamplePerMarker() =>
    [
        "lm.ExecuteStep.v1",        // IHostCommand
        "lm.OperationFailed.v1",    // IHostReply
        "lm.StartMigration.v1",     // IMigrationCommand
        "lm.MigrationRequested.v1", // IMigrationEvent
        "lm.GetMigrationState.v1",  // IMigrationQuery
        "lm.MigrationStateReply.v1", // IMigrationReply
        "lm.MigrationStatusChanged.v1", // IMigrationReply, published on the "migrations" topic
        "lm.HostStatusReport.v1",   // IInventoryMessage
        "lm.HostReported.v1",       // IInventoryEvent
        "lm.RecordAuditRequest.v1", // IAuditMessage
        "lm.AuditRequestRecorded.v1", // IAuditEvent
        "lm.DownPredecessor.v1",    // IMembershipMessage
    ];

    [Theory]
    [MemberData(nameof(OneSamplePerMarker))]
    public void A_message_of_each_kind_sent_to_an_actor_arrives_equal_as_a_deserialized_copy(string manifest)
    {
        Assert.True(ProtocolManifests.TryGetType(manifest, out var type));
        var sent = ProtocolSamples.For(type)[0];
        var echo = Sys.ActorOf(Props.Create(() => new Echo()));

        echo.Tell(sent, TestActor);

        var received = ExpectMsg<object>(TimeSpan.FromSeconds(3));
        Assert.Equal(sent, received);
        // a different instance: the message really went through bytes, not by reference
        Assert.NotSame(sent, received);
    }

    [Fact]
    public void Every_registered_message_finds_the_protocol_serializer_through_the_hocon_binding()
    {
        Assert.All(ProtocolSamples.All, sample =>
            Assert.IsType<ProtocolSerializer>(Sys.Serialization.FindSerializerFor(sample)));
    }

    [Fact]
    public async Task The_hosting_extension_binds_the_protocol_serializer_in_a_generic_host()
    {
        using var host = new HostBuilder()
            .ConfigureServices(services => services.AddAkka("hosting-serializer-test", builder => builder.WithProtocolSerializer()))
            .Build();
        await host.StartAsync();
        try
        {
            var system = host.Services.GetRequiredService<ActorSystem>();
            Assert.All(ProtocolSamples.All, sample =>
            {
                var serializer = Assert.IsType<ProtocolSerializer>(system.Serialization.FindSerializerFor(sample));
                var bytes = serializer.ToBinary(sample);
                var back = system.Serialization.Deserialize(bytes, ProtocolSerializer.SerializerIdentifier, serializer.Manifest(sample));
                Assert.Equal(sample, back);
            });
        }
        finally
        {
            await host.StopAsync();
        }
    }
}
