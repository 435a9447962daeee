using System.Text.RegularExpressions;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Protocol;
using LiveMigration.Shared.Serialization;

namespace LiveMigration.Shared.Tests.Serialization;

/// <summary>The manifest table must cover every message: one left out would fail at run time on the wire or in the journal.</summary>
public sealed class ProtocolManifestTests
{
    private static IEnumerable<Type> MessageTypesOfSharedAssembly() =>
        typeof(IHostCommand).Assembly.GetTypes()
            .Where(t => t is { IsAbstract: false, IsInterface: false })
            .Where(t => ProtocolSerialization.BoundTypes.Any(marker => marker.IsAssignableFrom(t)));

    [Fact]
    public void Every_message_type_of_the_shared_assembly_has_a_manifest()
    {
        var messageTypes = MessageTypesOfSharedAssembly().ToList();
        var missing = messageTypes.Where(t => !ProtocolManifests.TryGetManifest(t, out _)).Select(t => t.FullName).ToList();

        Assert.True(missing.Count == 0,
            $"messages without a manifest (add a line to ProtocolManifests and a sample to ProtocolSamples): {string.Join(", ", missing)}");
        // every kind is present, so the scan is not vacuous
        Assert.Contains(messageTypes, t => typeof(IHostCommand).IsAssignableFrom(t));
        Assert.Contains(messageTypes, t => typeof(IHostReply).IsAssignableFrom(t));
        Assert.Contains(messageTypes, t => typeof(IMigrationCommand).IsAssignableFrom(t));
        Assert.Contains(messageTypes, t => typeof(IMigrationEvent).IsAssignableFrom(t));
        Assert.Contains(messageTypes, t => typeof(IMigrationQuery).IsAssignableFrom(t));
        Assert.Contains(messageTypes, t => typeof(IMigrationReply).IsAssignableFrom(t));
        Assert.Contains(messageTypes, t => typeof(IAdmissionMessage).IsAssignableFrom(t));
        Assert.Contains(messageTypes, t => typeof(IInventoryMessage).IsAssignableFrom(t));
        Assert.Contains(messageTypes, t => typeof(IInventoryEvent).IsAssignableFrom(t));
        Assert.Contains(messageTypes, t => typeof(IAuditMessage).IsAssignableFrom(t));
        Assert.Contains(messageTypes, t => typeof(IAuditEvent).IsAssignableFrom(t));
    }

    [Fact]
    public void Every_registered_type_is_of_a_bound_kind_so_the_binding_routes_it_to_the_protocol_serializer()
    {
        var unbound = ProtocolManifests.All
            .Where(e => !ProtocolSerialization.BoundTypes.Any(marker => marker.IsAssignableFrom(e.Type)))
            .Select(e => e.Type.Name)
            .ToList();

        Assert.True(unbound.Count == 0, $"registered but not reachable through a marker interface: {string.Join(", ", unbound)}");
    }

    [Fact]
    public void Manifests_are_short_stable_names_with_a_version_not_clr_type_names()
    {
        var scheme = new Regex(@"^lm\.[A-Z][A-Za-z0-9]*\.v[1-9][0-9]*$");

        Assert.All(ProtocolManifests.All, entry =>
        {
            Assert.Matches(scheme, entry.Manifest);
            Assert.DoesNotContain(entry.Type.Namespace!, entry.Manifest);
        });
        Assert.Equal(ProtocolManifests.All.Count, ProtocolManifests.All.Select(e => e.Manifest).Distinct().Count());
        Assert.Equal(ProtocolManifests.All.Count, ProtocolManifests.All.Select(e => e.Type).Distinct().Count());
    }

    [Fact]
    public void Lookups_agree_in_both_directions()
    {
        Assert.All(ProtocolManifests.All, entry =>
        {
            Assert.True(ProtocolManifests.TryGetManifest(entry.Type, out var manifest));
            Assert.Equal(entry.Manifest, manifest);
            Assert.True(ProtocolManifests.TryGetType(entry.Manifest, out var type));
            Assert.Equal(entry.Type, type);
        });
        Assert.False(ProtocolManifests.TryGetType("lm.NoSuchMessage.v1", out _));
        Assert.False(ProtocolManifests.TryGetManifest(typeof(DiskPlan), out _));
    }

    [Fact]
    public void Every_registered_type_has_a_sample_for_the_round_trip_tests()
    {
        var withoutSample = ProtocolManifests.All.Where(e => !ProtocolSamples.Has(e.Type)).Select(e => e.Type.Name).ToList();

        Assert.True(withoutSample.Count == 0, $"add a sample to ProtocolSamples for: {string.Join(", ", withoutSample)}");
        Assert.All(ProtocolSamples.All, sample => Assert.True(ProtocolManifests.TryGetManifest(sample.GetType(), out _)));
    }
}
