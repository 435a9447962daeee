using System.Runtime.Serialization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Akka.Actor;
using Akka.Serialization;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Serialization;

namespace LiveMigration.Coordinator.Persistence;

/// <summary>
/// Writes a saga's snapshot (<see cref="MigrationState"/>) in the protocol's JSON under a fixed, versioned manifest
/// (<c>lm.MigrationSnapshot.v1</c>) instead of the default serializer's CLR type names, so a renamed or moved class
/// cannot make a journal unreadable (issue 9). The state goes through <see cref="MigrationSnapshotV1"/>, which spells
/// out what the constructor-only protocol JSON would drop (the status's kind, the rollback's end).
/// Snapshots written before this serializer keep their serializer id in the store and still read back.
/// </summary>
public sealed class MigrationSnapshotSerializer(ExtendedActorSystem system) : SerializerWithStringManifest(system)
{
    /// <summary>Stored with every snapshot: never change it (4_711 is the protocol serializer's).</summary>
    public const int SerializerIdentifier = 4_712;
    public const string ManifestV1 = "lm.MigrationSnapshot.v1";

    public override int Identifier => SerializerIdentifier;

    /// <summary>The binding of <see cref="MigrationState"/> to this serializer, as the journal's setup adds it.</summary>
    public static Akka.Configuration.Config Binding { get; } = Akka.Configuration.ConfigurationFactory.ParseString($$"""
        akka.actor {
          serializers.lm-snapshot = "{{typeof(MigrationSnapshotSerializer).FullName}}, {{typeof(MigrationSnapshotSerializer).Assembly.GetName().Name}}"
          serialization-bindings { "{{typeof(MigrationState).FullName}}, {{typeof(MigrationState).Assembly.GetName().Name}}" = lm-snapshot }
        }
        """);

    public override string Manifest(object o) => o is MigrationState
        ? ManifestV1
        : throw new SerializationException($"the snapshot serializer writes {nameof(MigrationState)} only, not {o.GetType().FullName}");

    public override byte[] ToBinary(object obj) => obj is MigrationState state
        ? JsonSerializer.SerializeToUtf8Bytes(MigrationSnapshotV1.Of(state), ProtocolJson.Options)
        : throw new SerializationException($"the snapshot serializer writes {nameof(MigrationState)} only, not {obj.GetType().FullName}");

    public override object FromBinary(byte[] bytes, string manifest)
    {
        if (manifest != ManifestV1)
            throw new SerializationException($"the snapshot serializer ({SerializerIdentifier}) cannot read manifest '{manifest}': written by a newer version?");
        try
        {
            var snapshot = JsonSerializer.Deserialize<MigrationSnapshotV1>(bytes, ProtocolJson.Options)
                           ?? throw new SerializationException($"the payload of a '{manifest}' is JSON null");
            return snapshot.ToState();
        }
        catch (JsonException e)
        {
            throw new SerializationException($"cannot read a '{manifest}' snapshot of {bytes.Length} bytes: {e.Message}", e);
        }
    }
}

/// <summary>A status as plain fields: its kind by name, and the fields the kind has.</summary>
public sealed record StatusV1(
    string Kind,
    TerminationKind? TerminationKind = null,
    string? Code = null,
    string? Message = null,
    Shared.Model.ImageId? Image = null,
    MigrationStep? Step = null,
    string? Reason = null)
{
    public static StatusV1 Of(MigrationStatus status) => status switch
    {
        MigrationStatus.New => new("new"),
        MigrationStatus.Queued => new("queued"),
        MigrationStatus.Running => new("running"),
        MigrationStatus.RollingBack r => new("rollingBack", r.Kind, r.Code, r.Message),
        MigrationStatus.Suspended s => new("suspended", Image: s.Image, Step: s.Step, Reason: s.Reason),
        MigrationStatus.Completed => new("completed"),
        MigrationStatus.Failed f => new("failed", Code: f.Code, Message: f.Message),
        MigrationStatus.Cancelled c => new("cancelled", Reason: c.Reason),
        MigrationStatus.Abandoned => new("abandoned"),
        _ => throw new SerializationException($"status {status.GetType().Name} has no snapshot form: add it to {nameof(StatusV1)}"),
    };

    public MigrationStatus ToStatus() => Kind switch
    {
        "new" => new MigrationStatus.New(),
        "queued" => new MigrationStatus.Queued(),
        "running" => new MigrationStatus.Running(),
        "rollingBack" => new MigrationStatus.RollingBack(Required(TerminationKind), Required(Code), Required(Message)),
        "suspended" => new MigrationStatus.Suspended(Required(Image), Required(Step), Required(Reason)),
        "completed" => new MigrationStatus.Completed(),
        "failed" => new MigrationStatus.Failed(Required(Code), Required(Message)),
        "cancelled" => new MigrationStatus.Cancelled(Required(Reason)),
        "abandoned" => new MigrationStatus.Abandoned(),
        _ => throw new JsonException($"unknown migration status kind '{Kind}'"),
    };

    private T Required<T>(T? value, [System.Runtime.CompilerServices.CallerArgumentExpression(nameof(value))] string field = "") where T : class =>
        value ?? throw new JsonException($"a '{Kind}' status needs '{field}'");

    private T Required<T>(T? value, [System.Runtime.CompilerServices.CallerArgumentExpression(nameof(value))] string field = "") where T : struct =>
        value ?? throw new JsonException($"a '{Kind}' status needs '{field}'");
}

/// <summary>The saga's state as written in a snapshot (version 1). New fields go last, optional.</summary>
public sealed record MigrationSnapshotV1(
    Shared.Model.MigrationId Id,
    StatusV1 Status,
    MigrationRequest? Request,
    ValueList<DiskState>? Disks,
    bool PointOfNoReturnPassed,
    DateTimeOffset? RequestedAt,
    DateTimeOffset? UpdatedAt,
    DateTimeOffset? FinishedAt,
    StatusV1? Termination,
    ValueList<LeftBehind>? LeftBehind = null)
{
    public static MigrationSnapshotV1 Of(MigrationState s) => new(
        s.Id, StatusV1.Of(s.Status), s.Request, s.DiskStates, s.PointOfNoReturnPassed, s.RequestedAt, s.UpdatedAt, s.FinishedAt,
        s.Termination is { } t ? StatusV1.Of(t) : null, s.LeftBehind);

    public MigrationState ToState() =>
        new MigrationState(Id, Status.ToStatus(), Request, Disks, PointOfNoReturnPassed, RequestedAt, UpdatedAt, FinishedAt, LeftBehind)
        {
            Termination = Termination?.ToStatus() as MigrationStatus.RollingBack
                          ?? (Termination is null ? null : throw new JsonException($"a termination must be 'rollingBack', not '{Termination.Kind}'")),
        };
}
