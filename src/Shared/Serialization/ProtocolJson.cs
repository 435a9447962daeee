using System.Globalization;
using System.Reflection;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Shared.Serialization;

/// <summary>
/// The JSON shape of the protocol: camelCase fields, ids as plain UUID strings, operation ids in their
/// string form, enums by name, instants in round-trip ("O") form, durations in constant ("c") form.
/// Every format is spelled out here rather than left to System.Text.Json's defaults, so a framework
/// upgrade cannot change what goes into the journal.
/// </summary>
public static class ProtocolJson
{
    public static JsonSerializerOptions Options { get; } = CreateOptions();

    private static JsonSerializerOptions CreateOptions()
    {
        var options = new JsonSerializerOptions
        {
            PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
            // the payloads go to a journal and over the wire, never into HTML: keep "+02:00" and non-ASCII readable there
            Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
            // nulls are written: a field's absence then only ever means "written before the field existed"
            DefaultIgnoreCondition = JsonIgnoreCondition.Never,
            // a payload missing a field that has no default, or null where null is not allowed, is refused with its name
            RespectRequiredConstructorParameters = true,
            RespectNullableAnnotations = true,
            // a newer node may add fields; an older one reads what it knows
            UnmappedMemberHandling = JsonUnmappedMemberHandling.Skip,
            TypeInfoResolver = new DefaultJsonTypeInfoResolver { Modifiers = { KeepOnlyConstructorParameters } },
        };
        options.Converters.Add(new UuidIdConverter<DomainId>(g => new DomainId(g), id => id.Value, "storage domain id"));
        options.Converters.Add(new UuidIdConverter<ImageId>(g => new ImageId(g), id => id.Value, "image id"));
        options.Converters.Add(new UuidIdConverter<VolumeId>(g => new VolumeId(g), id => id.Value, "volume id"));
        options.Converters.Add(new UuidIdConverter<VmId>(g => new VmId(g), id => id.Value, "VM id"));
        options.Converters.Add(new UuidIdConverter<MigrationId>(g => new MigrationId(g), id => id.Value, "migration id"));
        options.Converters.Add(new OperationIdConverter());
        options.Converters.Add(new RoundTripDateTimeOffsetConverter());
        options.Converters.Add(new ConstantTimeSpanConverter());
        options.Converters.Add(new ValueListConverterFactory());
        options.Converters.Add(new JsonStringEnumConverter(namingPolicy: null, allowIntegerValues: false));
        options.MakeReadOnly(populateMissingResolver: false);
        return options;
    }

    /// <summary>
    /// Records carry computed properties (<c>MigrationRequest.RetryPolicy</c>, <c>ImageInfo.Leaf</c>...): only what
    /// the constructor takes is state, so only that is written.
    /// </summary>
    private static void KeepOnlyConstructorParameters(JsonTypeInfo typeInfo)
    {
        if (typeInfo.Kind != JsonTypeInfoKind.Object
            || typeInfo.Type.Namespace?.StartsWith("LiveMigration.", StringComparison.Ordinal) != true)
            return;
        var constructor = typeInfo.Type.GetConstructors(BindingFlags.Public | BindingFlags.Instance)
            .OrderByDescending(c => c.GetParameters().Length)
            .FirstOrDefault();
        if (constructor is null || constructor.GetParameters().Length == 0) return;
        var parameterNames = constructor.GetParameters()
            .Select(p => p.Name)
            .OfType<string>()
            .ToHashSet(StringComparer.OrdinalIgnoreCase);
        for (var i = typeInfo.Properties.Count - 1; i >= 0; i--)
        {
            var memberName = (typeInfo.Properties[i].AttributeProvider as MemberInfo)?.Name ?? typeInfo.Properties[i].Name;
            if (!parameterNames.Contains(memberName)) typeInfo.Properties.RemoveAt(i);
        }
    }

    private sealed class UuidIdConverter<TId>(Func<Guid, TId> create, Func<TId, Guid> value, string what) : JsonConverter<TId>
    {
        public override TId Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
        {
            var text = reader.TokenType == JsonTokenType.String ? reader.GetString() : null;
            return UuidText.TryParse(text, out var guid)
                ? create(guid)
                : throw new JsonException($"a {what} must be a UUID string, got {Describe(ref reader)}");
        }

        public override void Write(Utf8JsonWriter writer, TId id, JsonSerializerOptions options) =>
            writer.WriteStringValue(value(id).ToString("D"));
    }

    private sealed class OperationIdConverter : JsonConverter<OperationId>
    {
        public override OperationId Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
        {
            var text = reader.TokenType == JsonTokenType.String ? reader.GetString() : null;
            return OperationId.TryParse(text, out var id)
                ? id
                : throw new JsonException($"an operation id must look like {{migrationId}}/{{step}}:{{imageId}}/{{attempt}}, got {Describe(ref reader)}");
        }

        public override void Write(Utf8JsonWriter writer, OperationId id, JsonSerializerOptions options) =>
            writer.WriteStringValue(id.ToString());
    }

    private sealed class RoundTripDateTimeOffsetConverter : JsonConverter<DateTimeOffset>
    {
        public override DateTimeOffset Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
        {
            var text = reader.TokenType == JsonTokenType.String ? reader.GetString() : null;
            return DateTimeOffset.TryParseExact(text, "O", CultureInfo.InvariantCulture, DateTimeStyles.None, out var at)
                ? at
                : throw new JsonException($"an instant must be in round-trip form like 2025-01-31T12:00:00.0000000+00:00, got {Describe(ref reader)}");
        }

        public override void Write(Utf8JsonWriter writer, DateTimeOffset at, JsonSerializerOptions options) =>
            writer.WriteStringValue(at.ToString("O", CultureInfo.InvariantCulture));
    }

    private sealed class ConstantTimeSpanConverter : JsonConverter<TimeSpan>
    {
        public override TimeSpan Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
        {
            var text = reader.TokenType == JsonTokenType.String ? reader.GetString() : null;
            return TimeSpan.TryParseExact(text, "c", CultureInfo.InvariantCulture, out var span)
                ? span
                : throw new JsonException($"a duration must be in constant form like 00:01:30.5000000, got {Describe(ref reader)}");
        }

        public override void Write(Utf8JsonWriter writer, TimeSpan span, JsonSerializerOptions options) =>
            writer.WriteStringValue(span.ToString("c", CultureInfo.InvariantCulture));
    }

    private sealed class ValueListConverterFactory : JsonConverterFactory
    {
        public override bool CanConvert(Type typeToConvert) =>
            typeToConvert.IsGenericType && typeToConvert.GetGenericTypeDefinition() == typeof(ValueList<>);

        public override JsonConverter CreateConverter(Type typeToConvert, JsonSerializerOptions options) =>
            (JsonConverter)Activator.CreateInstance(typeof(ValueListConverter<>).MakeGenericType(typeToConvert.GetGenericArguments()[0]))!;
    }

    private sealed class ValueListConverter<T> : JsonConverter<ValueList<T>>
    {
        public override ValueList<T> Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
        {
            var items = JsonSerializer.Deserialize<List<T>>(ref reader, options)
                ?? throw new JsonException($"a list of {typeof(T).Name} must be a JSON array, got null");
            return new ValueList<T>(items);
        }

        public override void Write(Utf8JsonWriter writer, ValueList<T> list, JsonSerializerOptions options)
        {
            writer.WriteStartArray();
            foreach (var item in list) JsonSerializer.Serialize(writer, item, options);
            writer.WriteEndArray();
        }
    }

    private static string Describe(ref Utf8JsonReader reader) =>
        reader.TokenType == JsonTokenType.String ? $"'{reader.GetString()}'" : reader.TokenType.ToString();
}
