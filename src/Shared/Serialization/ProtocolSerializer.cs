using System.Runtime.Serialization;
using System.Text.Json;
using Akka.Actor;
using Akka.Serialization;

namespace LiveMigration.Shared.Serialization;

/// <summary>
/// The serializer of everything that crosses the cluster or goes into the journal (DESIGN §2): System.Text.Json
/// payloads under a fixed manifest per type from <see cref="ProtocolManifests"/>. Bound to the protocol's marker
/// interfaces by <see cref="ProtocolSerialization"/>.
/// </summary>
public sealed class ProtocolSerializer(ExtendedActorSystem system) : SerializerWithStringManifest(system)
{
    /// <summary>
    /// Stored next to every journal entry and sent with every remote message: never change it. Akka.NET keeps
    /// 0–100 for itself; 4_711 is ours alone in this system.
    /// </summary>
    public const int SerializerIdentifier = 4_711;

    public override int Identifier => SerializerIdentifier;

    public override string Manifest(object o) => ManifestOf(o.GetType());

    public override byte[] ToBinary(object obj)
    {
        ManifestOf(obj.GetType()); // refuse an unregistered type before writing bytes nobody can read back
        return JsonSerializer.SerializeToUtf8Bytes(obj, obj.GetType(), ProtocolJson.Options);
    }

    public override object FromBinary(byte[] bytes, string manifest)
    {
        if (!ProtocolManifests.TryGetType(manifest, out var type))
            throw new SerializationException(
                $"the protocol serializer ({SerializerIdentifier}) has no type for manifest '{manifest}': " +
                "it was written by a newer or a different version, or its line was removed from ProtocolManifests");
        try
        {
            return JsonSerializer.Deserialize(bytes, type, ProtocolJson.Options)
                ?? throw new SerializationException($"the payload of manifest '{manifest}' ({type.Name}) is JSON null");
        }
        catch (JsonException e)
        {
            throw new SerializationException(
                $"cannot read a '{manifest}' ({type.Name}) payload of {bytes.Length} bytes: {e.Message}", e);
        }
    }

    private static string ManifestOf(Type type) =>
        ProtocolManifests.TryGetManifest(type, out var manifest)
            ? manifest
            : throw new SerializationException(
                $"{type.FullName} has no manifest: add a line for it to {nameof(ProtocolManifests)} in src/Shared/Serialization");
}
